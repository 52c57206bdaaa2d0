import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { runClient } from "../support/run.ts";

/** Session mode reuses clean server connections once their client leaves, after DISCARD ALL. */

let proxy: TestProxy;
let admin: pg.Client;
beforeAll(async () => {
  proxy = await startProxy({ log: { level: "info" } });
  admin = await directClient();
});
afterAll(async () => {
  await proxy.close();
  await admin.end();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const session = async (extra: Partial<pg.ClientConfig> = {}) => {
  const c = new pg.Client({ ...proxy.connection(), ...extra });
  c.on("error", () => {});
  await c.connect();
  return c;
};
const pidOf = async (c: pg.Client) =>
  (await c.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
/** Waits until the pool holds `n` idle connections (the reset runs after the client has left). */
const idle = async (n: number) => {
  for (let i = 0; i < 100 && proxy.server.pool.idleCount() !== n; i++) await sleep(20);
  expect(proxy.server.pool.idleCount()).toBe(n);
};
const logins = () => proxy.transitions.filter((t) => t.machine === "server" && t.cause === "LoggedIn").length;

describe("session-mode reuse of server connections", () => {
  it("hands a clean connection to the next client, reset: no temp table, no setting, no prepared statement", async () => {
    const a = await session();
    const pid = await pidOf(a);
    await a.query("CREATE TEMP TABLE pool_secret (v text)");
    await a.query("SET work_mem = '7MB'");
    await a.query("PREPARE pool_stmt AS SELECT 1");
    await a.end();
    await idle(1);
    const before = logins();
    const b = await session();
    expect(await pidOf(b)).toBe(pid);
    expect(logins()).toBe(before);
    expect(
      (await b.query("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'pool_secret'")).rows,
    ).toEqual([{ n: 0 }]);
    expect((await b.query("SHOW work_mem")).rows[0].work_mem).not.toBe("7MB");
    await expect(b.query("EXECUTE pool_stmt")).rejects.toMatchObject({ code: "26000" });
    // The reset is on the record: the server machine went through resetting.
    expect(proxy.transitions.some((t) => t.machine === "server" && t.to === "resetting")).toBe(true);
    // pg rejects at the ErrorResponse, possibly before its ReadyForQuery has passed pgwarden; a
    // client that leaves with a reply owed gets its server connection closed, not reused (as
    // PgBouncer does), so wait for an answered query before leaving.
    await b.query("SELECT 1");
    await b.end();
    await idle(1);
  });

  it("never hands a connection to a client with other startup settings", async () => {
    const a = await session({ application_name: "pool-a" });
    const pid = await pidOf(a);
    const before = proxy.server.pool.idleCount();
    await a.end();
    await idle(before + 1);
    const b = await session({ application_name: "pool-b" });
    // Session mode: RESET must return to the client's own startup value, as in PostgreSQL, so a
    // connection logged in with another client's settings is not reused.
    expect(await pidOf(b)).not.toBe(pid);
    expect((await b.query("SHOW application_name")).rows[0].application_name).toBe("pool-b");
    await b.query("SET application_name = 'changed'");
    await b.query("RESET application_name");
    expect((await b.query("SHOW application_name")).rows[0].application_name).toBe("pool-b");
    await b.end();
  });

  it("closes a connection its client left inside a transaction instead of reusing it", async () => {
    const a = await session();
    const pid = await pidOf(a);
    await a.query("BEGIN");
    await a.query("SELECT 1");
    (a as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    for (let i = 0; i < 100; i++) {
      const n = (await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1", [pid]))
        .rows[0].n;
      if (n === 0) break;
      await sleep(20);
    }
    expect(
      (await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1", [pid])).rows[0].n,
    ).toBe(0);
    const b = await session();
    expect(await pidOf(b)).not.toBe(pid);
    await b.end();
  });

  it("pgbench -C logs in upstream a handful of times, not once per client", async () => {
    const db = `pgw_pool_bench_${process.pid}`;
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${db} OWNER pgw_app`);
    try {
      const base = ["-h", "127.0.0.1", "-p", String(proxy.port), "-U", "postgres"];
      const init = await runClient("pgbench", [...base, "-i", "-s", "1", "-q", db]);
      expect(init.code).toBe(0);
      const before = logins();
      const run = await runClient("pgbench", [...base, "-C", "-S", "-c", "4", "-j", "2", "-t", "50", db]);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).toContain("number of failed transactions: 0");
      // 200 client connections; at most one login per concurrent client plus a few races.
      expect(logins() - before).toBeLessThan(20);
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    }
  });

  it("with maxIdlePerKey 0 every client gets a fresh login", async () => {
    const off = await startProxy({ pool: { maxIdlePerKey: 0 } });
    try {
      const pids: number[] = [];
      for (let i = 0; i < 2; i++) {
        const c = new pg.Client(off.connection());
        await c.connect();
        pids.push(await pidOf(c));
        await c.end();
        await sleep(50);
      }
      expect(pids[0]).not.toBe(pids[1]);
      expect(off.server.pool.idleCount()).toBe(0);
    } finally {
      await off.close();
    }
  });
});
