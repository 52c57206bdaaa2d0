import { createHash } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

let proxy: TestProxy;
let admin: pg.Client;
beforeAll(async () => {
  proxy = await startProxy();
  admin = await directClient();
});
afterAll(async () => {
  await admin.end();
  await proxy.close();
});

const client = async (options: Partial<pg.ClientConfig> = {}) => {
  const c = new pg.Client({ ...proxy.connection(), ...options });
  c.on("error", () => {});
  await c.connect();
  return c;
};

const sessionOf = (pid: number) => [...proxy.server.sessions.values()].find((s) => s.pid === pid);

/** Polls until `f` holds or `ms` pass; returns how long it took. */
const eventually = async (f: () => Promise<boolean>, ms: number): Promise<number> => {
  const start = Date.now();
  while (!(await f())) {
    if (Date.now() - start > ms) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - start;
};

const backendGone = (application: string) => async () =>
  (
    await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1", [
      application,
    ])
  ).rows[0].n === 0;

describe("node-postgres through pgwarden", () => {
  it("runs extended queries with binary parameters and binary results", async () => {
    const c = await client();
    const blob = Buffer.from([0, 1, 2, 255, 0, 128]);
    const r = await c.query({
      text: "SELECT $1::bytea AS b, $2::int4 + 1 AS n, $3::text AS t",
      values: [blob, 41, "héllo"],
    });
    expect(r.rows).toEqual([{ b: blob, n: 42, t: "héllo" }]);
    // `binary` is a real option of node-postgres that its type definitions omit.
    const bin: pg.QueryResult = await c.query({
      text: "SELECT $1::int4 AS n, 'abc'::text AS t",
      values: [1234567],
      binary: true,
    } as pg.QueryConfig);
    expect(bin.fields.map((f) => f.format)).toEqual(["binary", "binary"]);
    expect(bin.rows).toEqual([{ n: 1234567, t: "abc" }]);
    await c.end();
  });

  it("recovers from an error inside a transaction, and the machine tracks the status", async () => {
    const c = await client();
    const pid = (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p as number;
    await c.query("BEGIN");
    expect(sessionOf(pid)?.machine.state).toBe("ready.inTransaction");
    await expect(c.query("SELECT 1/0")).rejects.toMatchObject({ code: "22012" });
    expect(sessionOf(pid)?.machine.state).toBe("ready.failed");
    await expect(c.query("SELECT 1")).rejects.toMatchObject({ code: "25P02" });
    await c.query("ROLLBACK");
    expect(sessionOf(pid)?.machine.state).toBe("ready.idle");
    expect((await c.query("SELECT 2 AS n")).rows).toEqual([{ n: 2 }]);
    await c.end();
  });

  it("delivers LISTEN/NOTIFY payloads", async () => {
    const c = await client();
    await c.query("LISTEN pgw_channel");
    const got = new Promise<pg.Notification>((resolve) => c.on("notification", resolve));
    await admin.query("SELECT pg_notify('pgw_channel', 'payload ✓ 123')");
    const n = await got;
    expect(n.channel).toBe("pgw_channel");
    expect(n.payload).toBe("payload ✓ 123");
    await c.end();
  });

  it("relays notices", async () => {
    const c = await client();
    const notice = new Promise<{ message?: string }>((resolve) => c.on("notice", resolve));
    await c.query("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql %', 7; END $$");
    expect((await notice).message).toBe("hello from plpgsql 7");
    await c.end();
  });

  it("carries a 64 MB field both ways", async () => {
    const c = await client();
    const big = Buffer.alloc(64 * 1024 * 1024, "abcdefghij");
    big.write("start", 0);
    big.write("end", big.length - 3);
    const hash = createHash("sha256").update(big).digest("hex");
    const r = await c.query("SELECT length($1::bytea) AS n, encode(sha256($1::bytea), 'hex') AS h", [big]);
    expect(r.rows).toEqual([{ n: big.length, h: hash }]);
    const back = await c.query("SELECT repeat('x', 64 * 1024 * 1024) AS s");
    expect(back.rows[0].s.length).toBe(64 * 1024 * 1024);
    await c.end();
  }, 120_000);

  it("shows the backend's real PID and cancels pg_sleep(10) within a second through the proxy's key", async () => {
    const c = await client();
    const real = (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p as number;
    const pid = (c as unknown as { processID: number }).processID;
    const secret = (c as unknown as { secretKey: number }).secretKey;
    expect(pid).toBe(real);

    // A wrong secret does nothing.
    const wrong = await WireClient.open(proxy.port);
    const key = Buffer.alloc(4);
    key.writeInt32BE((secret ^ 0x5a5a5a5a) | 0);
    const short = c.query("SELECT pg_sleep(0.5) AS s");
    wrong.send(encodeCancelRequest(pid, key));
    expect((await short).rows).toEqual([{ s: "" }]);

    const started = Date.now();
    const sleeping = c.query("SELECT pg_sleep(10)");
    await new Promise((r) => setTimeout(r, 200));
    const good = Buffer.alloc(4);
    good.writeInt32BE(secret | 0);
    (await WireClient.open(proxy.port)).send(encodeCancelRequest(pid, good));
    await expect(sleeping).rejects.toMatchObject({ code: "57014" });
    expect(Date.now() - started).toBeLessThan(1500);
    expect((await c.query("SELECT 3 AS n")).rows).toEqual([{ n: 3 }]);
    await c.end();
  });

  it("closes the backend after Terminate and forgets the session", async () => {
    const c = await client({ application_name: "pgw_terminate" });
    await c.query("SELECT 1");
    const before = proxy.server.sessions.size;
    await c.end();
    await eventually(backendGone("pgw_terminate"), 3000);
    await eventually(async () => proxy.server.sessions.size === before - 1, 3000);
  });

  it("frees the server connection when the client vanishes mid-query", async () => {
    const c = await client({ application_name: "pgw_vanish" });
    const running = c.query("SELECT pg_sleep(30)").catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const took = await eventually(backendGone("pgw_vanish"), 5000);
    expect(took).toBeLessThan(3000);
    await running;
  });

  it("gives the client a clean 57P01 when its backend is terminated, and keeps serving others", async () => {
    const c = await client();
    const pid = (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p as number;
    const failed = new Promise<{ code?: string }>((resolve) =>
      c.on("error", (e) => resolve(e as { code?: string })),
    );
    await admin.query("SELECT pg_terminate_backend($1)", [pid]);
    expect((await failed).code).toBe("57P01");
    const next = await client();
    expect((await next.query("SELECT 4 AS n")).rows).toEqual([{ n: 4 }]);
    await next.end();
  });
});
