import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/** The console as a deployment reaches it: through the proxy's own front door, after SCRAM. */
let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy({
    pool: { mode: "transaction", size: 2 },
    admin: { identities: ["postgres"] },
    access: { grants: [{ identity: "*", databases: ["*"] }] },
  });
});
afterAll(async () => proxy?.close());

const connect = async (database?: string) => {
  const c = new pg.Client({ ...proxy.connection(), ...(database === undefined ? {} : { database }) });
  c.on("error", () => {});
  await c.connect();
  return c;
};

describe("admin console wired into the proxy", () => {
  it("shows the pools, clients, servers and stats of live traffic", async () => {
    const apps = await Promise.all([connect(), connect(), connect()]);
    for (const a of apps) await a.query("SELECT 1");
    const holder = apps[0]!;
    await holder.query("BEGIN");
    await holder.query("SELECT 1");
    const admin = await connect("pgwarden");
    const pools = (await admin.query("SHOW POOLS")).rows;
    const pool = pools.find((r) => r.pool_mode === "transaction");
    expect(pool).toBeDefined();
    expect(Number(pool.cl_active)).toBe(3);
    expect(Number(pool.sv_active)).toBe(1);
    const clients = (await admin.query("SHOW CLIENTS")).rows;
    expect(clients).toHaveLength(3);
    expect(clients.filter((c) => c.state === "active" && c.link !== null)).toHaveLength(1);
    const servers = (await admin.query("SHOW SERVERS")).rows;
    expect(servers.length).toBeGreaterThanOrEqual(1);
    expect(servers.length).toBeLessThanOrEqual(2);
    expect(servers.every((s) => Number(s.remote_pid) > 0)).toBe(true);
    const stats = (await admin.query("SHOW STATS")).rows;
    expect(Number(stats[0].total_xact_count)).toBeGreaterThanOrEqual(3);
    await holder.query("COMMIT");
    await admin.end();
    await Promise.all(apps.map((a) => a.end()));
  });

  it("refuses the console to an identity not listed, with 28000, never reaching PostgreSQL", async () => {
    const other = await startProxy({ admin: { identities: ["someone-else"] } });
    try {
      const c = new pg.Client({ ...other.connection(), database: "pgwarden" });
      const err = await c.connect().then(
        () => undefined,
        (e: { code?: string }) => e,
      );
      expect(err?.code).toBe("28000");
    } finally {
      await other.close();
    }
  });
});
