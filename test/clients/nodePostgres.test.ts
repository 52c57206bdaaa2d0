import { createHash, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ClientConnection as Session } from "../../src/runtime/ClientConnection.ts";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { splitMessages } from "../support/wire.ts";

/** node-postgres through pgwarden: every scenario uses a real pg.Client on the proxy port. */

const TABLE = "pgw_clients_np_big";
const LOCKS = "pgw_clients_np_locks";

let proxy: TestProxy;
let admin: pg.Client;
const opened: pg.Client[] = [];

beforeAll(async () => {
  proxy = await startProxy();
  admin = await directClient();
  await admin.query(`DROP TABLE IF EXISTS ${TABLE}`);
  await admin.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, t text)`);
  // No compression attempt on 64 MB of random text: the test is about the wire, not TOAST.
  await admin.query(`ALTER TABLE ${TABLE} ALTER COLUMN t SET STORAGE EXTERNAL`);
  await admin.query(`DROP TABLE IF EXISTS ${LOCKS}`);
  await admin.query(`CREATE TABLE ${LOCKS} (id int PRIMARY KEY, v int NOT NULL)`);
  await admin.query(`INSERT INTO ${LOCKS} VALUES (1, 0)`);
});

afterEach(async () => {
  for (const c of opened.splice(0)) await c.end().catch(() => {});
});

afterAll(async () => {
  await admin.query(`DROP TABLE IF EXISTS ${TABLE}, ${LOCKS}`);
  await admin.end();
  await proxy.close();
});

interface PgInternals {
  processID: number;
  secretKey: number;
  connection: { stream: Socket };
}
const internals = (c: pg.Client) => c as unknown as PgInternals;

let appCounter = 0;
/** application_name values unique to this file and run, to find backends in pg_stat_activity. */
const uniqueApp = (what: string) => `pgw_np_${what}_${process.pid}_${++appCounter}`;

const client = async (options: pg.ClientConfig = {}): Promise<pg.Client> => {
  const c = new pg.Client({ ...proxy.connection(), ...options });
  opened.push(c);
  await c.connect();
  return c;
};

const backendPid = async (c: pg.Client): Promise<number> =>
  (await c.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;

const sessionByPid = (pid: number): Session | undefined =>
  [...proxy.server.sessions.values()].find((s) => s.pid === pid);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` every 25 ms; returns the elapsed milliseconds, or throws after `ms`. */
const waitFor = async (
  what: string,
  check: () => boolean | Promise<boolean>,
  ms: number,
): Promise<number> => {
  const start = Date.now();
  for (;;) {
    if (await check()) return Date.now() - start;
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
};

const activeBackends = async (where: string, value: string | number): Promise<number> =>
  (
    await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE ${where} = $1`, [
      value,
    ])
  ).rows[0]!.n;

/** Waits until the backend `pid` is executing `pg_sleep`, so a cancel cannot arrive too early. */
const waitSleeping = (pid: number) =>
  waitFor(
    `backend ${pid} to run pg_sleep`,
    async () =>
      (
        await admin.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
          [pid],
        )
      ).rows[0]!.n === 1,
    3000,
  );

/** Sends a raw CancelRequest (int32 16, int32 80877102, pid, secret) to the proxy; resolves once it closes. */
const sendCancel = (pid: number, secret: number): Promise<void> =>
  new Promise((resolve, reject) => {
    const packet = Buffer.alloc(16);
    packet.writeInt32BE(16, 0);
    packet.writeInt32BE(80877102, 4);
    packet.writeInt32BE(pid, 8);
    packet.writeInt32BE(secret | 0, 12);
    const s = connect({ host: "127.0.0.1", port: proxy.port }, () => s.write(packet));
    s.on("error", reject);
    s.on("data", () => reject(new Error("a CancelRequest must get no answer")));
    s.on("close", () => resolve());
  });

const logCount = (conn: string, msg: string) =>
  proxy.logs.filter((l) => l.conn === conn && l.msg === msg).length;

const transitionsOf = (conn: string) =>
  proxy.transitions.filter((t) => t.connectionId === conn).map((t) => `${t.from}->${t.to}:${t.cause}`);

describe("node-postgres through pgwarden", () => {
  it("runs a simple query and a multi-statement string", async () => {
    const c = await client();
    const one = await c.query("SELECT 1::int AS one, 'two'::text AS two, NULL::int AS three");
    expect(one.command).toBe("SELECT");
    expect(one.rowCount).toBe(1);
    expect(one.rows).toEqual([{ one: 1, two: "two", three: null }]);

    const multi = (await c.query(
      "CREATE TEMP TABLE pgw_np_tmp (x int); INSERT INTO pgw_np_tmp VALUES (1), (2), (3); " +
        "SELECT sum(x)::int AS s FROM pgw_np_tmp; SELECT 'end' AS e",
    )) as unknown as pg.QueryResult[];
    expect(multi.map((r) => [r.command, r.rowCount])).toEqual([
      ["CREATE", null],
      ["INSERT", 3],
      ["SELECT", 1],
      ["SELECT", 1],
    ]);
    expect(multi[2]!.rows).toEqual([{ s: 6 }]);
    expect(multi[3]!.rows).toEqual([{ e: "end" }]);
  });

  it("passes binary parameters and binary results through untouched", async () => {
    const c = await client();
    // node-postgres decodes every field as UTF-8 text before its binary parsers run, so only values
    // whose binary form is plain ASCII survive its own decoding; the raw bytes are checked below.
    const typed = await c.query({
      text: "SELECT $1::int4 AS n, $2::int8 AS big, $3::float8 AS f, $4::bool AS ok, $5::text AS t, NULL::int4 AS z",
      values: [16909060, "72623859790382856", 3, true, "héllo ✓"],
      binary: true,
    } as pg.QueryConfig);
    expect(typed.fields.map((f) => [f.name, f.format])).toEqual([
      ["n", "binary"],
      ["big", "binary"],
      ["f", "binary"],
      ["ok", "binary"],
      ["t", "binary"],
      ["z", "binary"],
    ]);
    expect(typed.rows).toEqual([
      { n: 16909060, big: "72623859790382856", f: 3, ok: true, t: "héllo ✓", z: null },
    ]);

    // A Buffer parameter is sent in binary format; every byte value must reach the server intact.
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const seen = await c.query("SELECT encode($1::bytea, 'hex') AS hex, length($1::bytea) AS n", [all]);
    expect(seen.rows).toEqual([{ hex: all.toString("hex"), n: 256 }]);

    // Binary results: capture the raw bytes the client receives and read the DataRow ourselves.
    const chunks: Buffer[] = [];
    const stream = internals(c).connection.stream;
    const tap = (chunk: Buffer) => chunks.push(chunk);
    stream.on("data", tap);
    await c.query({
      text: "SELECT $1::bytea AS b, -2::int4 AS n, 1.5::float8 AS f",
      values: [all],
      binary: true,
    } as pg.QueryConfig);
    stream.off("data", tap);
    const messages = splitMessages(Buffer.concat(chunks));
    expect(messages.map((m) => m.type).join("")).toBe("12TDCZ");
    const row = messages[3]!.msg;
    const expected = Buffer.alloc(2 + 4 + 256 + 4 + 4 + 4 + 8);
    let p = expected.writeInt16BE(3, 0);
    p = expected.writeInt32BE(256, p);
    p += all.copy(expected, p);
    p = expected.writeInt32BE(4, p);
    p = expected.writeInt32BE(-2, p);
    p = expected.writeInt32BE(8, p);
    expected.writeDoubleBE(1.5, p);
    expect(row.subarray(5).equals(expected)).toBe(true);
  });

  it("recovers from an error inside a transaction; the machine follows ready.failed then ready.idle", async () => {
    const c = await client();
    const session = sessionByPid(await backendPid(c));
    expect(session).toBeDefined();
    await c.query("CREATE TEMP TABLE pgw_np_tx (x int)");
    expect(session!.machine.state).toBe("ready.idle");
    await c.query("BEGIN");
    expect(session!.machine.state).toBe("ready.inTransaction");
    await c.query("INSERT INTO pgw_np_tx VALUES (1)");
    await expect(c.query("SELECT no_such_column FROM pgw_np_tx")).rejects.toMatchObject({ code: "42703" });
    // node-postgres rejects on ErrorResponse, before the ReadyForQuery that follows it has arrived.
    await waitFor("ready.failed", () => session!.machine.state === "ready.failed", 1000);
    await expect(c.query("SELECT 1")).rejects.toMatchObject({
      code: "25P02",
      message: "current transaction is aborted, commands ignored until end of transaction block",
    });
    // Extended protocol in a failed transaction gets the same answer.
    await expect(c.query("SELECT $1::int AS n", [1])).rejects.toMatchObject({ code: "25P02" });
    await waitFor("ready.failed", () => session!.machine.state === "ready.failed", 1000);
    const rb = await c.query("ROLLBACK");
    expect(rb.command).toBe("ROLLBACK");
    expect(session!.machine.state).toBe("ready.idle");
    expect((await c.query("SELECT count(*)::int AS n FROM pgw_np_tx")).rows).toEqual([{ n: 0 }]);
    expect(session!.machine.state).toBe("ready.idle");

    const states = proxy.transitions
      .filter((t) => t.connectionId === session!.id && t.to.startsWith("ready."))
      .map((t) => t.to);
    // idle (login), idle (pid), idle (temp table), inTransaction (BEGIN, INSERT), failed (x3), idle (ROLLBACK, count)
    expect(states).toEqual([
      "ready.idle",
      "ready.idle",
      "ready.idle",
      "ready.inTransaction",
      "ready.inTransaction",
      "ready.failed",
      "ready.failed",
      "ready.failed",
      "ready.idle",
      "ready.idle",
    ]);
  });

  it("delivers a NOTIFY from a direct connection to a proxied listener", async () => {
    const c = await client();
    const channel = "pgw_np_channel";
    await c.query(`LISTEN ${channel}`);
    const received: pg.Notification[] = [];
    const first = new Promise<void>((resolve) =>
      c.on("notification", (n) => {
        received.push(n);
        resolve();
      }),
    );
    const payload = `payload ✓ ${"z".repeat(1000)} end`;
    await admin.query("SELECT pg_notify($1, $2)", [channel, payload]);
    await first;
    expect(received).toHaveLength(1);
    expect(received[0]!.channel).toBe(channel);
    expect(received[0]!.payload).toBe(payload);
    expect(received[0]!.processId).toBe(internals(admin).processID);
    // The connection is still usable after an asynchronous message.
    expect((await c.query("SELECT 'after' AS a")).rows).toEqual([{ a: "after" }]);
  });

  it("carries a 64 MB text field in a parameter and back", async () => {
    const c = await client();
    // Random base64: 48 MiB of entropy is exactly 64 MiB of ASCII text.
    const big = randomBytes(48 * 1024 * 1024).toString("base64");
    expect(big.length).toBe(64 * 1024 * 1024);
    const hash = createHash("sha256").update(big).digest("hex");
    const ins = await c.query(`INSERT INTO ${TABLE} (id, t) VALUES ($1, $2)`, [1, big]);
    expect(ins.rowCount).toBe(1);
    const server = await c.query(
      `SELECT octet_length(t) AS n, encode(sha256(convert_to(t, 'UTF8')), 'hex') AS h FROM ${TABLE} WHERE id = 1`,
    );
    expect(server.rows).toEqual([{ n: big.length, h: hash }]);
    const back = await c.query<{ t: string }>(`SELECT t FROM ${TABLE} WHERE id = 1`);
    const got = back.rows[0]!.t;
    expect(got.length).toBe(big.length);
    expect(createHash("sha256").update(got).digest("hex")).toBe(hash);
  }, 60_000);

  it("relays a RAISE NOTICE as a notice event with the exact message", async () => {
    const c = await client();
    const notices: { message?: string; code?: string; severity?: string }[] = [];
    c.on("notice", (n) => notices.push(n));
    await c.query("DO $$ BEGIN RAISE NOTICE 'pgwarden notice % and %', 42, 'ünïcode'; END $$");
    expect(notices.map((n) => [n.severity, n.code, n.message])).toEqual([
      ["NOTICE", "00000", "pgwarden notice 42 and ünïcode"],
    ]);
  });

  it("shows the real backend PID and honours only the right cancel key", async () => {
    const c = await client();
    const pid = await backendPid(c);
    const { processID, secretKey } = internals(c);
    expect(processID).toBe(pid);
    const session = sessionByPid(pid)!;
    expect(session).toBeDefined();

    // Wrong secret: nothing happens, the short sleep completes normally.
    const short = c.query("SELECT pg_sleep(1) AS slept");
    await waitSleeping(pid);
    await sendCancel(pid, secretKey ^ 0x00010001);
    // Wrong PID with the right secret: nothing either.
    await sendCancel(pid + 1, secretKey);
    expect((await short).rows).toEqual([{ slept: "" }]);
    expect(logCount(session.id, "cancel request forwarded")).toBe(0);

    // Right key: a 10 s sleep is cancelled well within a second of the request.
    const started = Date.now();
    const long = c.query("SELECT pg_sleep(10)");
    const outcome = long.then(
      () => ({ code: "none", at: Date.now() }),
      (e: { code?: string }) => ({ code: e.code, at: Date.now() }),
    );
    await waitSleeping(pid);
    const cancelAt = Date.now();
    await sendCancel(pid, secretKey);
    const result = await outcome;
    expect(result.code).toBe("57014");
    expect(result.at - cancelAt).toBeLessThan(1000);
    expect(result.at - started).toBeLessThan(2000);
    expect(logCount(session.id, "cancel request forwarded")).toBe(1);
    // Same session, same backend, still usable.
    expect(await backendPid(c)).toBe(pid);
    expect(session.machine.state).toBe("ready.idle");
  });

  it("Terminate ends the session; its clean backend is reset and kept for the next client", async () => {
    const app = uniqueApp("terminate");
    const c = await client({ application_name: app });
    const pid = await backendPid(c);
    const session = sessionByPid(pid)!;
    expect(session).toBeDefined();
    expect(await activeBackends("application_name", app)).toBe(1);
    await c.end();
    // The client's Terminate is not PostgreSQL's business: the pool keeps the backend, after DISCARD ALL.
    await waitFor(
      "the backend to be reset and idle in the pool",
      async () =>
        (
          await admin.query<{ n: number }>(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'idle' AND query = 'DISCARD ALL'",
            [pid],
          )
        ).rows[0]!.n === 1,
      2000,
    );
    await waitFor("the session to be removed", () => !proxy.server.sessions.has(session.id), 2000);
    expect(session.machine.state).toBe("closed");
    // The key the client held no longer cancels anything.
    const secret = Buffer.alloc(4);
    secret.writeInt32BE(internals(c).secretKey | 0);
    expect(proxy.server.cancels.find(pid, secret)).toBeUndefined();
    const path = transitionsOf(session.id);
    expect(path.slice(-2)).toEqual([
      "ready.idle->terminating:Terminate",
      expect.stringMatching(/^terminating->closed:(Closed|ClientClosed)$/),
    ]);
  });

  it("frees the server connection when the client disappears mid-query", async () => {
    const app = uniqueApp("vanish");
    const c = await client({ application_name: app });
    c.on("error", () => {});
    const pid = await backendPid(c);
    const session = sessionByPid(pid)!;
    const running = c.query("SELECT pg_sleep(30)").catch((e: Error) => e);
    await waitSleeping(pid);
    expect(session.machine.state).toBe("busy.simpleQuery");
    const destroyedAt = Date.now();
    internals(c).connection.stream.destroy();
    const took = await waitFor(
      "the backend to leave pg_stat_activity",
      async () => (await activeBackends("application_name", app)) === 0,
      3000,
    );
    expect(took).toBeLessThan(3000);
    await waitFor("the session to be removed", () => !proxy.server.sessions.has(session.id), 2000);
    expect(Date.now() - destroyedAt).toBeLessThan(3000);
    expect(session.machine.state).toBe("closed");
    expect(transitionsOf(session.id).slice(-2)).toEqual([
      "busy.simpleQuery->terminating:ClientClosed",
      "terminating->closed:Closed",
    ]);
    expect(await running).toBeInstanceOf(Error);
  });

  it("frees the server connection when the client disappears while rows stream", async () => {
    const app = uniqueApp("vanish_rows");
    const c = await client({ application_name: app });
    c.on("error", () => {});
    const pid = await backendPid(c);
    const session = sessionByPid(pid)!;
    // About 10 GB of rows: far more than any buffer between the backend and the client.
    const streaming = new pg.Query("SELECT g, repeat('r', 1000) FROM generate_series(1, 10000000) g");
    const firstRows = new Promise<void>((resolve) => {
      let n = 0;
      streaming.on("row", () => {
        if (++n === 1000) resolve();
      });
    });
    streaming.on("error", () => {});
    c.query(streaming);
    await firstRows;
    expect(session.machine.state).toBe("busy.simpleQuery");
    const destroyedAt = Date.now();
    internals(c).connection.stream.destroy();
    await waitFor(
      "the backend to leave pg_stat_activity",
      async () => (await activeBackends("application_name", app)) === 0,
      3000,
    );
    await waitFor("the session to be removed", () => !proxy.server.sessions.has(session.id), 2000);
    expect(Date.now() - destroyedAt).toBeLessThan(3000);
    expect(transitionsOf(session.id).slice(-2)).toEqual([
      "busy.simpleQuery->terminating:ClientClosed",
      "terminating->closed:Closed",
    ]);
  });

  it("a client gone inside an open transaction leaves no backend and no lock behind", async () => {
    const app = uniqueApp("open_tx");
    const c = await client({ application_name: app });
    c.on("error", () => {});
    const pid = await backendPid(c);
    const session = sessionByPid(pid)!;
    await c.query("BEGIN");
    await c.query(`UPDATE ${LOCKS} SET v = v + 1 WHERE id = 1`);
    expect(session.machine.state).toBe("ready.inTransaction");
    internals(c).connection.stream.destroy();
    await waitFor(
      "the backend to leave pg_stat_activity",
      async () => (await activeBackends("application_name", app)) === 0,
      3000,
    );
    // The backend can leave before the client leg's close is seen: wait for the session's end too.
    await waitFor(
      "the session to close",
      async () => transitionsOf(session.id).at(-1)?.endsWith(":Closed") === true,
      3000,
    );
    expect(transitionsOf(session.id).slice(-2)).toEqual([
      "ready.inTransaction->terminating:ClientClosed",
      "terminating->closed:Closed",
    ]);
    // The row lock is gone and the update was rolled back.
    await admin.query("SET lock_timeout = '1s'");
    try {
      const upd = await admin.query(`UPDATE ${LOCKS} SET v = v + 10 WHERE id = 1 RETURNING v`);
      expect(upd.rows).toEqual([{ v: 10 }]);
    } finally {
      await admin.query("RESET lock_timeout");
      await admin.query(`UPDATE ${LOCKS} SET v = 0 WHERE id = 1`);
    }
  });

  it("fails a running query with 57P01 when its backend is terminated", async () => {
    const c = await client({ application_name: uniqueApp("killed_busy") });
    const events: string[] = [];
    c.on("error", (e: Error & { code?: string }) => events.push(`error:${e.code ?? e.message}`));
    const pid = await backendPid(c);
    const session = sessionByPid(pid)!;
    const running = c.query("SELECT pg_sleep(30)").then(
      () => "completed",
      (e: Error & { code?: string }) => `${e.code}: ${e.message}`,
    );
    await waitSleeping(pid);
    const started = Date.now();
    await admin.query("SELECT pg_terminate_backend($1)", [pid]);
    expect(await running).toBe("57P01: terminating connection due to administrator command");
    expect(Date.now() - started).toBeLessThan(1000);
    await waitFor("the session to be removed", () => !proxy.server.sessions.has(session.id), 2000);
    expect(transitionsOf(session.id).slice(-2)).toEqual([
      "busy.simpleQuery->terminating:ServerFatal",
      expect.stringMatching(/^terminating->closed:(Closed|ClientClosed)$/),
    ]);
    // What node-postgres reports after the query failed: only the end of the connection, no second code.
    expect(events.filter((e) => /^error:[0-9A-Z]{5}$/.test(e))).toEqual([]);
  });

  it("gives the client 57P01 when its backend is terminated, and keeps serving others", async () => {
    const app = uniqueApp("killed");
    const c = await client({ application_name: app });
    const errors: { code?: string; message: string }[] = [];
    const firstError = new Promise<void>((resolve) =>
      c.on("error", (e: Error & { code?: string }) => {
        errors.push({ code: e.code, message: e.message });
        resolve();
      }),
    );
    const ended = new Promise<void>((resolve) => c.on("end", () => resolve()));
    const pid = await backendPid(c);
    const session = sessionByPid(pid)!;
    const killed = await admin.query<{ ok: boolean }>("SELECT pg_terminate_backend($1) AS ok", [pid]);
    expect(killed.rows).toEqual([{ ok: true }]);
    await firstError;
    await ended;
    expect(errors[0]).toEqual({
      code: "57P01",
      message: "terminating connection due to administrator command",
    });
    // No second, synthetic error: PostgreSQL's FATAL is the only one the client hears about.
    expect(errors.filter((e) => e.code !== undefined).map((e) => e.code)).toEqual(["57P01"]);
    await waitFor("the session to be removed", () => !proxy.server.sessions.has(session.id), 2000);
    expect(session.machine.state).toBe("closed");
    expect(transitionsOf(session.id).slice(-2)).toEqual([
      "ready.idle->terminating:ServerFatal",
      expect.stringMatching(/^terminating->closed:(Closed|ClientClosed)$/),
    ]);

    const next = await client({ application_name: uniqueApp("after_kill") });
    expect((await next.query("SELECT 'still serving' AS s")).rows).toEqual([{ s: "still serving" }]);
    expect(await backendPid(next)).not.toBe(pid);
  });
});
