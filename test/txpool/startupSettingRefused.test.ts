import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { fieldsOf } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * A startup setting PostgreSQL refuses (`DateStyle=no such style`). Directly, PostgreSQL ends
 * the login with FATAL 22023 naming the parameter and the value; through a pool the client
 * should learn the same — the value is its own, the answer names nothing of the server — rather
 * than an opaque 08004.
 */

const direct = async (): Promise<{ code?: string; message: string }> => {
  const info = postgresInfo();
  const c = new pg.Client({
    host: info.host,
    port: info.port,
    user: info.appRole,
    password: info.rolePassword,
    database: info.appDatabase,
    options: "-c DateStyle=nonsense",
  });
  c.on("error", () => {});
  try {
    await c.connect();
    return { message: "connected" };
  } catch (e) {
    return e as { code?: string; message: string };
  } finally {
    await c.end().catch(() => {});
  }
};

for (const mode of ["session", "transaction"] as const) {
  describe(`a refused startup setting (${mode} mode)`, () => {
    let proxy: TestProxy;
    beforeAll(async () => {
      const info = postgresInfo();
      proxy = await startProxy({
        upstream: { user: info.appRole, password: info.rolePassword },
        auth: { method: "trust" },
        access: { grants: [{ identity: "app", databases: ["*"], role: info.appRole }] },
        pool: { mode, size: 2 },
        log: { level: "warn" },
      });
    });
    afterAll(() => proxy?.close());

    it("gets PostgreSQL's 22023 naming the parameter", async () => {
      const expected = await direct();
      expect(expected.code).toBe("22023");
      const w = await WireClient.open(proxy.port);
      w.send(
        encodeStartup(
          new Map([
            ["user", "app"],
            ["database", postgresInfo().appDatabase],
            ["DateStyle", "nonsense"],
          ]),
        ),
      );
      await w.until((x) => x.closed, 5000, "the refusal");
      const e = w.messages().find((m) => m.type === "E");
      const f = e === undefined ? undefined : fieldsOf(e.msg);
      const got = { code: f?.get("C"), message: f?.get("M") };
      expect({ code: got.code, message: got.message }).toEqual({ code: "22023", message: expected.message });
    });
  });
}
