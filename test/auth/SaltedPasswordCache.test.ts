import { pbkdf2Sync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { connectUpstream, UpstreamCredentials } from "../../src/adapters/upstream.ts";
import { SaltedPasswordCache, scramSaltOf } from "../../src/auth/SaltedPasswordCache.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { postgresInfo } from "../support/postgres.ts";

describe("SaltedPassword cache for the upstream login", () => {
  it("computes PBKDF2 once per (salt, iterations), off the event loop, and agrees with PBKDF2", async () => {
    const cache = new SaltedPasswordCache("pencil");
    const salt = Buffer.from("0123456789abcdef");
    const first = cache.get(salt, 4096);
    expect(cache.get(salt, 4096)).toBe(first);
    expect(await first).toEqual(pbkdf2Sync("pencil", salt, 4096, 32, "sha256"));
    const other = cache.get(Buffer.from("fedcba9876543210"), 4096);
    expect(other).not.toBe(first);
    expect(cache.size).toBe(2);
  });

  it("reads salt and iterations from a server-first-message", () => {
    expect(scramSaltOf("r=abc,s=QSXCR+Q6sek8bf92,i=4096")).toEqual({
      salt: Buffer.from("QSXCR+Q6sek8bf92", "base64"),
      iterations: 4096,
    });
    expect(scramSaltOf("r=abc,i=4096")).toBeUndefined();
  });

  it("logs in to PostgreSQL twice as a SCRAM role with one PBKDF2 between them", async () => {
    const pg = postgresInfo();
    const credentials = new UpstreamCredentials(pg.rolePassword);
    const login = () =>
      connectUpstream({
        host: pg.host,
        port: pg.port,
        connectTimeoutMs: 5000,
        parameters: new Map([
          ["user", "u_scram"],
          ["database", "postgres"],
        ]),
        credentials,
      });
    for (let i = 0; i < 2; i++) {
      const r = await login();
      if (isPgwardenError(r) || "_tag" in r) throw new Error(r.message);
      r.socket.destroy();
    }
    // PostgreSQL keeps the role's salt: the second login reused the first one's SaltedPassword.
    expect(credentials.salted.size).toBe(1);
  });
});
