import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/** Statement mode and per-database overrides, through the proxy's own front door. */
let statement: TestProxy;
let overridden: TestProxy;
beforeAll(async () => {
  statement = await startProxy({ pool: { mode: "statement", size: 1 } });
  overridden = await startProxy({
    pool: { mode: "session", size: 5, overrides: [{ database: "postgres", mode: "transaction", size: 1 }] },
  });
});
afterAll(async () => {
  await statement?.close();
  await overridden?.close();
});

const connect = async (p: TestProxy) => {
  const c = new pg.Client(p.connection());
  c.on("error", () => {});
  await c.connect();
  return c;
};

describe("statement mode", () => {
  it("runs single statements of many clients over one server connection", async () => {
    const clients = await Promise.all(Array.from({ length: 5 }, () => connect(statement)));
    const pids = new Set<number>();
    await Promise.all(
      clients.map(async (c, i) => {
        for (let k = 0; k < 10; k++) {
          const r = await c.query("SELECT pg_backend_pid() AS pid, $1::int AS i", [i]);
          expect(r.rows[0].i).toBe(i);
          pids.add(r.rows[0].pid);
        }
      }),
    );
    expect(pids.size).toBe(1);
    await Promise.all(clients.map((c) => c.end()));
  });

  it("ends a client that opens a transaction block with FATAL 0A000; its connection is not handed on inside the block", async () => {
    const c = await connect(statement);
    await c.query("CREATE TABLE IF NOT EXISTS stmt_mode_probe (v int)");
    await c.query("TRUNCATE stmt_mode_probe");
    const e = (await c.query("BEGIN").catch((x: unknown) => x)) as pg.DatabaseError;
    expect(e.code).toBe("0A000");
    expect(e.message).toMatch(/transaction blocks are not allowed in statement pooling mode/);
    const other = await connect(statement);
    // The connection the block was opened on was closed, not handed on inside a transaction.
    expect((await other.query("SELECT count(*)::int AS n FROM stmt_mode_probe")).rows[0].n).toBe(0);
    expect((await other.query("SELECT now() = statement_timestamp() AS fresh")).rows[0].fresh).toBe(true);
    await other.query("DROP TABLE stmt_mode_probe");
    await other.end();
  });
});

describe("pool.overrides", () => {
  it("gives the overridden database transaction mode with its own size", async () => {
    const a = await connect(overridden);
    const b = await connect(overridden);
    await a.query("BEGIN");
    const pidA = (await a.query("SELECT pg_backend_pid() AS p")).rows[0].p;
    // Size 1 in transaction mode: b waits for a's transaction, then runs on the same backend.
    const pending = b.query("SELECT pg_backend_pid() AS p");
    await new Promise((r) => setTimeout(r, 100));
    await a.query("COMMIT");
    expect((await pending).rows[0].p).toBe(pidA);
    const pools = overridden.server.pool.all();
    expect(pools.map((p) => [p.settings.mode, p.settings.size])).toEqual([["transaction", 1]]);
    await a.end();
    await b.end();
  });
});
