import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/**
 * A client's protocol-level prepared statements end with its session (PostgreSQL drops a
 * backend's statements when it exits); the pool's registry must forget them too, or it grows
 * with every client that ever connected and keeps their server statements alive.
 */
let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy({ pool: { mode: "transaction", size: 1 }, log: { level: "warn" } });
});
afterAll(async () => {
  await proxy?.close();
});

describe("prepared statements of clients that disconnected", () => {
  it("are forgotten by the pool", async () => {
    for (let i = 0; i < 5; i++) {
      const c = new pg.Client(proxy.connection());
      await c.connect();
      const r = await c.query({ name: `gone_${i}`, text: `SELECT ${i}::int AS i`, values: [] });
      expect(r.rows).toEqual([{ i }]);
      await c.end();
    }
    // Give the proxy a moment to see each close.
    await new Promise((r) => setTimeout(r, 300));
    const statements = proxy.server.pool.all()[0]!.statements!;
    // Direct PostgreSQL: every one of those sessions' statements is gone with the session.
    expect(statements.size.clients).toBe(0);
  });
});
