import { createServer, type Server, type Socket } from "node:net";
import type pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { sleep } from "../support/hostile.ts";
import { type PgSession, PgSession as Session } from "../support/pgSession.ts";
import {
  backends,
  createFixture,
  type Fixture,
  type PooledTarget,
  type StartOptions,
  startTarget,
  superuserIn,
  supports,
  TARGET,
  targetMissing,
} from "./target.ts";

/** Every pool limit and timeout, each with its own pooler instance, against the clock. */

const skip = targetMissing();

/** SQLSTATE classes a pooler may use for "waited too long for a server connection". */
const WAIT_TIMEOUT_CLASSES = /^(08|53)/;

describe.skipIf(skip !== undefined)(`pool limits and timeouts (${skip ?? "running"})`, () => {
  let fixture: Fixture;
  let target: PooledTarget | undefined;
  let admin: pg.Client;
  const open: PgSession[] = [];

  const start = async (o: StartOptions) => {
    target = await startTarget(fixture, o);
    return target;
  };
  const session = async (role = fixture.roles[0]) => {
    const s = await target!.session(role);
    open.push(s);
    return s;
  };
  const roleBackends = async (role = fixture.roles[0]) =>
    (await backends(fixture)).filter((b) => b.usename === role);
  /** Polls an async count until `pred` holds; false after `ms`. */
  const until = async (f: () => Promise<boolean>, ms: number) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (await f()) return true;
      await sleep(50);
    }
    return false;
  };

  beforeAll(async () => {
    fixture = await createFixture("limits");
    admin = await superuserIn(fixture.database);
    await admin.query("CREATE TABLE limit_rows (id int PRIMARY KEY)");
    await admin.query(`GRANT ALL ON limit_rows TO ${fixture.roles.join(", ")}`);
  });

  afterEach(async () => {
    for (const s of open.splice(0)) s.vanish();
    await target?.stop();
    target = undefined;
    // The next test starts from no server connections at all.
    await until(async () => (await backends(fixture)).length === 0, 10_000);
  });

  afterAll(async () => {
    await admin?.end();
  });

  it("pool size caps the server connections; twelve concurrent clients all finish", async () => {
    await start({ pool: { mode: "transaction", size: 2 } });
    const clients = await Promise.all(Array.from({ length: 12 }, () => session()));
    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        most = Math.max(most, (await roleBackends()).length);
        await sleep(20);
      }
    })();
    const results = await Promise.all(
      clients.map((c) => c.query("SELECT pg_backend_pid() FROM pg_sleep(0.2)")),
    );
    sampling = false;
    await sampler;
    for (const r of results) expect(r.error).toBeUndefined();
    expect(new Set(results.map((r) => r.rows[0]![0])).size).toBeLessThanOrEqual(2);
    expect(most).toBeLessThanOrEqual(2);
  });

  it("queryWaitTimeoutMs: a client waiting too long for a server connection gets a timeout error", async () => {
    await start({ pool: { mode: "transaction", size: 1, queryWaitTimeoutMs: 600 } });
    const [holder, waiter] = [await session(), await session()];
    expect((await holder.query("BEGIN")).status).toBe("T");
    const t0 = Date.now();
    const r = await waiter.query("SELECT 1", 15_000);
    const waited = Date.now() - t0;
    expect(r.error?.code).toMatch(WAIT_TIMEOUT_CLASSES);
    expect(r.error?.message).toMatch(/timeout/i);
    expect(waited).toBeGreaterThanOrEqual(500);
    expect(waited).toBeLessThan(5000);
    // The holder was not disturbed.
    expect((await holder.query("SELECT 1; COMMIT")).error).toBeUndefined();
  });

  it("a client logs in while every server connection is busy (login needs no server connection)", async () => {
    await start({ pool: { mode: "transaction", size: 1, queryWaitTimeoutMs: 5000 } });
    const holder = await session();
    expect((await holder.query("BEGIN")).status).toBe("T");
    const t0 = Date.now();
    const late = await session();
    expect(Date.now() - t0).toBeLessThan(1000);
    const waiting = late.query("SELECT 'served after COMMIT'");
    await sleep(200);
    await holder.query("COMMIT");
    expect((await waiting).rows).toEqual([["served after COMMIT"]]);
  });

  it("limits.maxClientConnections: the client over the cap is refused, the others go on", async () => {
    await start({ pool: { mode: "transaction", size: 1 }, maxClientConnections: 3 });
    const three = [await session(), await session(), await session()];
    const over = await Session.login({
      port: target!.port,
      user: fixture.roles[0],
      database: fixture.database,
      password: fixture.password,
    }).then(
      () => undefined,
      (e: { code?: string; message: string }) => e,
    );
    expect(over).toBeDefined();
    if (supports("clientLimitSqlstate")) expect(over?.code).toBe("53300");
    else expect(over?.message).toMatch(/max_client_conn|too many/i);
    for (const s of three) expect(await s.value("SELECT 'fine'")).toBe("fine");
    three[0]!.terminate();
    await sleep(200);
    expect(await (await session()).value("SELECT 'room again'")).toBe("room again");
  });

  it.skipIf(!supports("maxClientsPerPool"))(
    "maxClientsPerPool: 53300 for the pool that is full, other pools unaffected",
    async () => {
      await start({ pool: { mode: "transaction", size: 1, maxClientsPerPool: 2 } });
      await session();
      await session();
      const over = await session().then(
        () => undefined,
        (e: { code?: string }) => e,
      );
      expect(over?.code).toBe("53300");
      const other = await session(fixture.roles[1]);
      expect(await other.value("SELECT current_user")).toBe(fixture.roles[1]);
    },
  );

  it("reserveSize after reserveAfterMs: a waiting client gets an extra server connection", async () => {
    await start({
      pool: { mode: "transaction", size: 1, reserveSize: 1, reserveAfterMs: 300, queryWaitTimeoutMs: 10_000 },
    });
    const [holder, waiter] = [await session(), await session()];
    const held = Number((await holder.query("BEGIN; SELECT pg_backend_pid()")).rows[0]![0]);
    const t0 = Date.now();
    const r = await waiter.query("SELECT pg_backend_pid()", 10_000);
    expect(r.error).toBeUndefined();
    expect(Number(r.rows[0]![0])).not.toBe(held);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect((await roleBackends()).length).toBe(2);
    await holder.query("COMMIT");
  });

  it("minIdle: the pool keeps that many server connections open with no traffic", async () => {
    await start({ pool: { mode: "transaction", size: 4, minIdle: 2 } });
    const s = await session();
    await s.value("SELECT 1");
    expect(await until(async () => (await roleBackends()).length >= 2, 8000)).toBe(true);
    await sleep(500);
    expect((await roleBackends()).length).toBe(2);
  });

  it("serverIdleTimeoutMs: idle server connections close while their clients stay", async () => {
    await start({ pool: { mode: "transaction", size: 2, serverIdleTimeoutMs: 500 } });
    const [a, b] = [await session(), await session()];
    await Promise.all([a.query("SELECT pg_sleep(0.2)"), b.query("SELECT pg_sleep(0.2)")]);
    expect((await roleBackends()).length).toBeGreaterThan(0);
    expect(await until(async () => (await roleBackends()).length === 0, 8000)).toBe(true);
    expect(await a.value("SELECT 'reopened'")).toBe("reopened");
  });

  it("serverLifetimeMs: a server connection older than that is replaced", async () => {
    await start({ pool: { mode: "transaction", size: 1, serverLifetimeMs: 600 } });
    const s = await session();
    const first = await s.backendPid();
    await sleep(800);
    const deadline = Date.now() + 8000;
    let now = await s.backendPid();
    while (now === first && Date.now() < deadline) {
      await sleep(100);
      now = await s.backendPid();
    }
    expect(now).not.toBe(first);
    expect(await until(async () => !(await roleBackends()).some((b) => b.pid === first), 5000)).toBe(true);
  });

  it("idleInTransactionTimeoutMs: ends the idle client in a transaction (25P03), rolls back, spares idle clients", async () => {
    await start({ pool: { mode: "transaction", size: 2, idleInTransactionTimeoutMs: 500 } });
    const idleOutside = await session();
    const inTx = await session();
    expect((await inTx.query("BEGIN; INSERT INTO limit_rows VALUES (1)")).status).toBe("T");
    await inTx.wire.waitClosed(5000);
    const err = inTx.pending().find((m) => m.type === "E");
    expect(err).toBeDefined();
    const fields = /\0C([^\0]*)\0/.exec(`\0${err!.msg.toString("utf8", 6)}`);
    if (TARGET === "pgwarden") expect(fields?.[1]).toBe("25P03");
    else expect(err!.msg.toString()).toMatch(/idle transaction timeout/i);
    expect((await admin.query(`SELECT count(*)::int AS n FROM limit_rows`)).rows).toEqual([{ n: 0 }]);
    await sleep(300);
    expect(await idleOutside.value("SELECT 'still here'")).toBe("still here");
  });

  it.skipIf(!supports("transactionTimeout"))(
    "transactionTimeoutMs: a transaction running longer is ended and rolled back",
    async () => {
      await start({ pool: { mode: "transaction", size: 1, transactionTimeoutMs: 700 } });
      const s = await session();
      const began = await s.query("BEGIN; INSERT INTO limit_rows VALUES (2)");
      expect(began.status).toBe("T");
      let ended = false;
      for (let i = 0; i < 10 && !ended; i++) {
        if (s.closed) ended = true;
        else {
          const r = await s.query("SELECT pg_sleep(0.2)").catch(() => undefined);
          ended = r === undefined || r.error !== undefined || s.closed;
        }
      }
      expect(ended).toBe(true);
      expect((await admin.query("SELECT count(*)::int AS n FROM limit_rows WHERE id = 2")).rows).toEqual([
        { n: 0 },
      ]);
      // The pool still serves others.
      expect(await (await session()).value("SELECT 'next'")).toBe("next");
    },
  );

  it.skipIf(TARGET !== "pgwarden")(
    "serverConnectTimeoutMs: an upstream that never answers gives the client an error, not a hang",
    async () => {
      const silent: Socket[] = [];
      const blackHole: Server = createServer((s) => {
        silent.push(s);
        s.on("error", () => {});
      });
      await new Promise<void>((r) => blackHole.listen(0, "127.0.0.1", r));
      const port = (blackHole.address() as { port: number }).port;
      try {
        await start({
          pool: { mode: "transaction", size: 1, serverConnectTimeoutMs: 500, queryWaitTimeoutMs: 10_000 },
          upstreamPort: port,
        });
        const t0 = Date.now();
        const outcome = await session().then(
          async (s) => (await s.query("SELECT 1", 15_000)).error,
          (e: { code?: string }) => e,
        );
        expect(outcome?.code).toMatch(/^(08|57|53)/);
        expect(Date.now() - t0).toBeLessThan(8000);
        expect(silent.length).toBeGreaterThan(0);
      } finally {
        for (const s of silent) s.destroy();
        blackHole.close();
      }
    },
  );

  it("a server connection that dies while idle is replaced without the client noticing", async () => {
    await start({ pool: { mode: "transaction", size: 1, serverCheckDelayMs: 0 } });
    const s = await session();
    const first = await s.backendPid();
    await admin.query("SELECT pg_terminate_backend($1)", [first]);
    await until(async () => !(await roleBackends()).some((b) => b.pid === first), 5000);
    const r = await s.query("SELECT pg_backend_pid()");
    expect(r.error).toBeUndefined();
    expect(Number(r.rows[0]![0])).not.toBe(first);
  });

  it("a server connection that dies under a client's transaction gives it a clear error; the pool recovers", async () => {
    await start({ pool: { mode: "transaction", size: 1 } });
    const s = await session();
    const pid = Number((await s.query("BEGIN; SELECT pg_backend_pid()")).rows[0]![0]);
    await admin.query("SELECT pg_terminate_backend($1)", [pid]);
    // The error may arrive before this query is sent (PostgreSQL's FATAL) or answer it.
    const r = await s.query("SELECT 1").catch((e: Error) => e);
    expect(r instanceof Error ? r.message : r.error?.code).toMatch(/^(57P01|08)/);
    const next = await session();
    expect(await next.value("SELECT 'recovered'")).toBe("recovered");
  });
});
