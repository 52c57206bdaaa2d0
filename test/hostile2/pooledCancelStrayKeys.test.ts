import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import type { PgSession } from "../support/pgSession.ts";
import { createFixture, type Fixture, type PooledTarget, startTarget } from "../txpool/target.ts";

/**
 * CancelRequests in transaction mode that must cancel nothing: a key whose client holds no server
 * connection (it is between transactions, and the only server runs someone else's query), the key
 * of a client that has already left, keys with a wrong secret, a cancel for a client idle inside a
 * transaction, and cancels racing the end of their own client's statement while another client's
 * statement is queued for the same (only) server connection. PgBouncer drops a cancel for a client
 * that has no server linked ("cancel request for console client" / no link), and PostgreSQL ignores
 * a cancel that reaches an idle backend; so in every case the bystander's query must finish.
 */

const cancelWith = (port: number, pid: number, secret: Buffer): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => s.write(encodeCancelRequest(pid, secret)));
    const t = setTimeout(() => {
      s.destroy();
      resolve(false);
    }, 3000);
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(t);
      resolve(true);
    });
  });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("stray cancels in transaction mode (one server connection)", () => {
  let fixture: Fixture;
  let target: PooledTarget;
  const open: PgSession[] = [];
  beforeAll(async () => {
    fixture = await createFixture("h2cancel");
    target = await startTarget(fixture, { pool: { mode: "transaction", size: 1 } });
  });
  afterAll(async () => {
    for (const s of open) s.vanish();
    await target?.stop();
  });
  const session = async () => {
    const s = await target.session();
    open.push(s);
    return s;
  };

  it("a client between transactions: its key does not cancel the query another client runs on its last server", async () => {
    const idle = await session();
    const busy = await session();
    const idlePid = await idle.backendPid();
    const running = busy.query("SELECT pg_backend_pid(), pg_sleep(1.2)");
    await sleep(300);
    expect(await cancelWith(target.port, idle.processId, idle.secret)).toBe(true);
    const r = await running;
    expect(r.error, "the idle client's key cancelled a bystander").toBeUndefined();
    expect(Number(r.rows[0]![0])).toBe(idlePid);
    expect(await idle.value("SELECT 'still fine'")).toBe("still fine");
  });

  it("the key of a client that has left cancels nothing", async () => {
    const gone = await session();
    await gone.value("SELECT 1");
    const { processId, secret } = gone;
    gone.terminate();
    await sleep(100);
    const busy = await session();
    const running = busy.query("SELECT pg_sleep(1.2)");
    await sleep(300);
    expect(await cancelWith(target.port, processId, secret)).toBe(true);
    expect((await running).error, "a departed client's key cancelled a bystander").toBeUndefined();
  });

  it("wrong secrets, a neighbour's secret, an empty and a long secret cancel nothing", async () => {
    const a = await session();
    const b = await session();
    const running = b.query("SELECT pg_sleep(1.2)");
    await sleep(300);
    const tries: [number, Buffer][] = [
      [b.processId, Buffer.from([0, 0, 0, 0])],
      [b.processId, a.secret],
      [a.processId, b.secret],
      [b.processId, Buffer.alloc(0)],
      [b.processId, Buffer.concat([b.secret, b.secret])],
      [b.processId + 1, b.secret],
      [0, b.secret],
    ];
    const closed = await Promise.all(tries.map(([pid, s]) => cancelWith(target.port, pid, s)));
    expect(closed.every(Boolean), "a cancel connection was left open").toBe(true);
    expect((await running).error).toBeUndefined();
  });

  it("a cancel for a client idle in a transaction hits nothing; its transaction carries on", async () => {
    const a = await session();
    const waiter = await session();
    await a.value("BEGIN");
    await a.value("SELECT 1");
    // waiter queues for the only server connection, which a holds.
    const queued = waiter.query("SELECT 'waited'");
    await sleep(100);
    expect(await cancelWith(target.port, a.processId, a.secret)).toBe(true);
    await sleep(100);
    expect(await a.value("SELECT 'in txn'")).toBe("in txn");
    expect(await a.value("COMMIT")).toBeNull();
    const w = await queued;
    expect(w.error, "the queued client was cancelled").toBeUndefined();
    expect(w.rows[0]![0]).toBe("waited");
  });

  it("cancels racing the end of their own client's statement never hit the next client's", async () => {
    const a = await session();
    const b = await session();
    for (let i = 0; i < 12; i++) {
      const mine = a.query("SELECT pg_sleep(0.05)");
      const theirs = b.query("SELECT pg_sleep(0.25)");
      await sleep(30 + (i % 6) * 8);
      const sent = cancelWith(target.port, a.processId, a.secret);
      const [m, t] = await Promise.all([mine, theirs]);
      await sent;
      // a's own statement may or may not have been cancelled: both are right.
      expect([undefined, "57014"]).toContain(m.error?.code);
      expect(t.error, `round ${i}: the bystander was cancelled`).toBeUndefined();
    }
  }, 20_000);

  it("a client queued for the server: its key does not cancel the query holding the server", async () => {
    const holder = await session();
    const waiter = await session();
    const running = holder.query("SELECT pg_sleep(1)");
    await sleep(200);
    const queued = waiter.query("SELECT 'served'");
    await sleep(100);
    expect(await cancelWith(target.port, waiter.processId, waiter.secret)).toBe(true);
    const h = await running;
    expect(h.error, "the waiting client's key cancelled the query holding the server").toBeUndefined();
    const w = await queued;
    // Either is defensible for the waiter's own statement; the holder is what must be untouched.
    expect([undefined, "57014"]).toContain(w.error?.code);
  });

  it("control: the running client's own key cancels it with 57014", async () => {
    const b = await session();
    const running = b.query("SELECT pg_sleep(5)");
    await sleep(300);
    expect(await cancelWith(target.port, b.processId, b.secret)).toBe(true);
    expect((await running).error?.code).toBe("57014");
  });
});

describe("stray cancels in session mode (one server connection, reused)", () => {
  let fixture: Fixture;
  let target: PooledTarget;
  const open: PgSession[] = [];
  beforeAll(async () => {
    fixture = await createFixture("h2cancels");
    target = await startTarget(fixture, { pool: { mode: "session", size: 1 } });
  });
  afterAll(async () => {
    for (const s of open) s.vanish();
    await target?.stop();
  });

  it("a departed client's key does not cancel the next client on the same backend (same PID)", async () => {
    const gone = await target.session();
    open.push(gone);
    const pid = await gone.backendPid();
    const { processId, secret } = gone;
    gone.terminate();
    await sleep(200);
    const next = await target.session();
    open.push(next);
    expect(await next.backendPid()).toBe(pid);
    // Session mode hands out the backend's real PID: the two keys differ only in their secret.
    expect(next.processId).toBe(processId);
    const running = next.query("SELECT pg_sleep(1.2)");
    await sleep(300);
    expect(await cancelWith(target.port, processId, secret)).toBe(true);
    expect(
      (await running).error,
      "the departed client's key cancelled the backend's new client",
    ).toBeUndefined();
    const again = next.query("SELECT pg_sleep(5)");
    await sleep(200);
    expect(await cancelWith(target.port, next.processId, next.secret)).toBe(true);
    expect((await again).error?.code).toBe("57014");
  });
});
