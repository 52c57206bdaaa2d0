import { createHash } from "node:crypto";
import { once } from "node:events";
import { Readable, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ClientConnection as Session } from "../../src/runtime/ClientConnection.ts";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/** postgres.js through pgwarden, on a single connection (max: 1) so pipelining really happens. */

const COPY_IN = "pgw_clients_pjs_copy_in";
const COPY_ERR = "pgw_clients_pjs_copy_err";
const TX = "pgw_clients_pjs_tx";
const MB50 = 50 * 1024 * 1024;

let proxy: TestProxy;
let admin: pg.Client;
let sql: postgres.Sql;
const notices: string[] = [];

beforeAll(async () => {
  proxy = await startProxy();
  admin = await directClient();
  await admin.query(`DROP TABLE IF EXISTS ${COPY_IN}, ${COPY_ERR}, ${TX}`);
  await admin.query(`CREATE TABLE ${COPY_IN} (id int NOT NULL, body text NOT NULL)`);
  await admin.query(`CREATE TABLE ${COPY_ERR} (id int NOT NULL, body text NOT NULL)`);
  await admin.query(`CREATE TABLE ${TX} (id int PRIMARY KEY)`);
  sql = postgres({
    ...proxy.connection(),
    max: 1,
    idle_timeout: 0,
    onnotice: (n) => notices.push(String(n.message)),
  });
});

afterAll(async () => {
  await sql.end({ timeout: 5 });
  await admin.query(`DROP TABLE IF EXISTS ${COPY_IN}, ${COPY_ERR}, ${TX}`);
  await admin.end();
  await proxy.close();
});

const backendPid = async (): Promise<number> => {
  const [row] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
  return row!.pid;
};

const sessionOf = async (): Promise<Session> => {
  const pid = await backendPid();
  const s = [...proxy.server.sessions.values()].find((x) => x.pid === pid);
  if (s === undefined) throw new Error(`no proxy session for backend ${pid}`);
  return s;
};

/** One COPY text line; the server can produce the same line with SQL. */
const copyLine = (i: number) => `${i}\t${"p".repeat(90)} row ${i}\n`;

describe("postgres.js through pgwarden", () => {
  it("runs simple queries", async () => {
    expect(await sql`select 1::int as one, 'two' as two, null::text as three`).toEqual([
      { one: 1, two: "two", three: null },
    ]);
    const multi = await sql.unsafe("select 1 as a; select 2 as b").simple();
    expect(multi).toEqual([[{ a: 1 }], [{ b: 2 }]]);
    const rows = await sql`select g as n from generate_series(1, 1000) g`;
    expect(rows.count).toBe(1000);
    expect(rows.at(-1)).toEqual({ n: 1000 });
  });

  it("binds parameters of several types", async () => {
    const bytes = Buffer.from([0, 1, 127, 128, 255]);
    const [row] = await sql`
      select ${41}::int + 1 as n, ${"tëxt ✓"}::text as t, ${bytes}::bytea as b,
             ${true}::bool as ok, ${null}::int as z, ${"12345678901234"}::int8 as big`;
    expect(row).toEqual({ n: 42, t: "tëxt ✓", b: bytes, ok: true, z: null, big: "12345678901234" });
    const list = await sql`select x from unnest(${sql.array([3, 1, 2])}::int[]) x order by x`;
    expect(list.map((r) => r.x)).toEqual([1, 2, 3]);
  });

  it("answers 50 pipelined queries on one connection, in order", async () => {
    const session = await sessionOf();
    const mark = proxy.transitions.length;
    const pending: Promise<postgres.RowList<{ i: number }[]>>[] = [];
    for (let i = 0; i < 50; i++) pending.push(sql<{ i: number }[]>`select ${i}::int as i`);
    const results = await Promise.all(pending);
    expect(results.map((r) => r.length)).toEqual(Array.from({ length: 50 }, () => 1));
    expect(results.map((r) => r[0]!.i)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    // Pipelined: the 50 queries overlap, so the session goes idle far fewer than 50 times.
    const idles = proxy.transitions
      .slice(mark)
      .filter((t) => t.connectionId === session.id && t.to === "ready.idle").length;
    expect(idles).toBeGreaterThanOrEqual(1);
    expect(idles).toBeLessThan(25);
    expect(session.machine.state).toBe("ready.idle");
  });

  it("fails only the bad query in the middle of a pipeline", async () => {
    const session = await sessionOf();
    const settled = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        i === 10 ? sql`select 1 / ${0}::int as i` : sql<{ i: number }[]>`select ${i}::int as i`,
      ),
    );
    expect(
      settled.map((r) =>
        r.status === "fulfilled"
          ? (r.value[0] as { i: number }).i
          : (r.reason as postgres.PostgresError).code,
      ),
    ).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "22012", 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    expect(session.machine.state).toBe("ready.idle");
  });

  it("pipelines inside a transaction: after an error the rest get 25P02 and the block rolls back", async () => {
    const session = await sessionOf();
    const results: string[] = [];
    const err = await sql
      .begin((tx) => {
        const qs = [
          tx`insert into ${tx(TX)} (id) values (100)`,
          tx`insert into ${tx(TX)} (id) values (${"x"}::int)`,
          tx`insert into ${tx(TX)} (id) values (101)`,
        ];
        for (const [k, q] of qs.entries())
          q.then(
            () => results.push(`${k}:ok`),
            (e: postgres.PostgresError) => results.push(`${k}:${e.code}`),
          );
        return qs;
      })
      .catch((e: postgres.PostgresError) => e);
    expect((err as postgres.PostgresError).code).toBe("22P02");
    expect(results).toEqual(["0:ok", "1:22P02", "2:25P02"]);
    expect(session.machine.state).toBe("ready.idle");
    expect(
      await admin.query(`SELECT count(*)::int AS n FROM ${TX} WHERE id >= 100`).then((r) => r.rows),
    ).toEqual([{ n: 0 }]);
  });

  it("rolls back a transaction that failed and carries on", async () => {
    const session = await sessionOf();
    const err = await sql
      .begin(async (tx) => {
        await tx`insert into ${tx(TX)} (id) values (1)`;
        await tx`insert into ${tx(TX)} (id) values (1)`;
      })
      .catch((e: postgres.PostgresError) => e);
    expect(err).toBeInstanceOf(postgres.PostgresError);
    expect((err as postgres.PostgresError).code).toBe("23505");
    expect(session.machine.state).toBe("ready.idle");
    const states = proxy.transitions.filter((t) => t.connectionId === session.id).map((t) => t.to);
    expect(states.slice(-3)).toEqual(["ready.failed", "busy.extendedQuery", "ready.idle"]);
    expect(await admin.query(`SELECT count(*)::int AS n FROM ${TX}`).then((r) => r.rows)).toEqual([{ n: 0 }]);

    const committed = await sql.begin(async (tx) => {
      await tx`insert into ${tx(TX)} (id) values (2)`;
      const [r] = await tx`select count(*)::int as n from ${tx(TX)}`;
      return r!.n as number;
    });
    expect(committed).toBe(1);
    expect(await admin.query(`SELECT array_agg(id)::text AS ids FROM ${TX}`).then((r) => r.rows)).toEqual([
      { ids: "{2}" },
    ]);
    expect(session.machine.state).toBe("ready.idle");
  });

  it("copies 50 MB in with COPY FROM STDIN", async () => {
    const session = await sessionOf();
    let rows = 0;
    let bytes = 0;
    let idSum = 0n;
    async function* chunks() {
      while (bytes < MB50) {
        let chunk = "";
        for (let k = 0; k < 1000; k++) {
          const line = copyLine(rows);
          idSum += BigInt(rows);
          rows++;
          chunk += line;
        }
        bytes += chunk.length;
        yield chunk;
      }
    }
    const writable = await sql`copy ${sql(COPY_IN)} (id, body) from stdin`.writable();
    expect(session.machine.state).toBe("busy.copy.in");
    await pipeline(Readable.from(chunks()), writable);
    expect(bytes).toBeGreaterThanOrEqual(MB50);
    const check = await admin.query(
      `SELECT count(*)::int AS n, sum(id)::text AS s, sum(octet_length(body) + length(id::text) + 2)::text AS b FROM ${COPY_IN}`,
    );
    expect(check.rows).toEqual([{ n: rows, s: idSum.toString(), b: String(bytes) }]);
    expect(session.machine.state).toBe("ready.idle");
  }, 60_000);

  it("copies 50 MB out with COPY TO STDOUT, byte for byte", async () => {
    // Rows until the expected output reaches 50 MB.
    let n = 0;
    let expectedBytes = 0;
    const expectedHash = createHash("sha256");
    while (expectedBytes < MB50) {
      n++;
      const line = copyLine(n);
      expectedBytes += line.length;
      expectedHash.update(line);
    }
    const readable = await sql`
      copy (select g, repeat('p', 90) || ' row ' || g from generate_series(1, ${sql.unsafe(String(n))}) g)
      to stdout`.readable();
    let bytes = 0;
    let lines = 0;
    const hash = createHash("sha256");
    for await (const chunk of readable as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      hash.update(chunk);
      for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
    }
    expect(bytes).toBe(expectedBytes);
    expect(lines).toBe(n);
    expect(hash.digest("hex")).toBe(expectedHash.digest("hex"));
    // The connection is usable right after the stream ends.
    expect(await sql`select 'after copy out' as s`).toEqual([{ s: "after copy out" }]);
    expect((await sessionOf()).machine.state).toBe("ready.idle");
  }, 60_000);

  it("reports bad data in COPY IN with its SQLSTATE and keeps the connection", async () => {
    const pid = await backendPid();
    const session = await sessionOf();
    const writable: Writable = await sql`copy ${sql(COPY_ERR)} (id, body) from stdin`.writable();
    const failed = once(writable, "error") as Promise<[postgres.PostgresError]>;
    writable.write("1\tgood\n2\talso good\n");
    writable.write("not_a_number\tbad\n");
    const [err] = await failed;
    expect(err).toBeInstanceOf(postgres.PostgresError);
    expect(err.code).toBe("22P02");
    expect(err.message).toBe('invalid input syntax for type integer: "not_a_number"');
    // The same backend serves the next query, and nothing of the failed COPY was kept.
    expect(await backendPid()).toBe(pid);
    expect(await sql`select count(*)::int as n from ${sql(COPY_ERR)}`).toEqual([{ n: 0 }]);
    expect(session.machine.state).toBe("ready.idle");
    const path = proxy.transitions
      .filter((t) => t.connectionId === session.id)
      .map((t) => `${t.from}->${t.to}:${t.cause}`);
    expect(path).toContain("busy.copy.in->ready.idle:ReadyForQuery");
    expect(path).not.toContainEqual(expect.stringContaining("violation"));
    // A good COPY afterwards on the same connection.
    const again = await sql`copy ${sql(COPY_ERR)} (id, body) from stdin`.writable();
    await pipeline(Readable.from(["7\tseven\n", "8\teight\n"]), again);
    expect(await sql`select id, body from ${sql(COPY_ERR)} order by id`).toEqual([
      { id: 7, body: "seven" },
      { id: 8, body: "eight" },
    ]);
    expect(notices).toEqual([]);
  });
});
