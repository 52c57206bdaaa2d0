import { Exit, Schema } from "effect";
import { describe, expect, it } from "vitest";
import { AdminConfig, AdminSection, routeAdmin } from "../../src/admin/config.ts";
import { isPgwardenError } from "../../src/errors.ts";

describe("admin config", () => {
  it("defaults to nobody on database pgwarden, section absent or empty", () => {
    const none = { identities: [], database: "pgwarden" };
    expect(Schema.decodeUnknownSync(AdminConfig)({})).toEqual(none);
    expect(Schema.decodeUnknownSync(Schema.Struct({ admin: AdminSection }))({})).toEqual({ admin: none });
  });

  it("rejects names the console could not match or log safely", () => {
    for (const bad of [
      { identities: "ops" },
      { identities: [""] },
      { identities: [" ops"] },
      { identities: ["o\nps"] },
      { database: "" },
      { database: "d".repeat(64) },
    ]) {
      expect(Exit.isFailure(Schema.decodeUnknownExit(AdminConfig)(bad))).toBe(true);
    }
  });

  it("routes the console database to admin for listed identities and refuses the rest", () => {
    const config = Schema.decodeUnknownSync(AdminConfig)({ identities: ["ops", "monitor"] });
    expect(routeAdmin(config, "ops", "pgwarden")).toBe("admin");
    expect(routeAdmin(config, "monitor", "pgwarden")).toBe("admin");
    expect(routeAdmin(config, "ops", "app")).toBe("upstream");
    expect(routeAdmin(config, "alice", "app")).toBe("upstream");
    const refused = routeAdmin(config, "alice", "pgwarden");
    expect(isPgwardenError(refused) && [refused.code, refused.sqlstate]).toEqual([
      "PGW_ACCESS_DENIED",
      "28000",
    ]);
    // Case matters, as for PostgreSQL database names.
    expect(routeAdmin(config, "ops", "PGWARDEN")).toBe("upstream");
    const nobody = Schema.decodeUnknownSync(AdminConfig)({});
    expect(isPgwardenError(routeAdmin(nobody, "ops", "pgwarden"))).toBe(true);
  });
});
