import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

let proxy: TestProxy;
let admin: pg.Client;
let sql: postgres.Sql;
beforeAll(async () => {
  proxy = await startProxy();
  admin = await directClient();
  await admin.query("DROP TABLE IF EXISTS pgw_copy_js; CREATE TABLE pgw_copy_js (id int, body text)");
  sql = postgres({ ...proxy.connection(), max: 1, onnotice: () => {} });
});
afterAll(async () => {
  await sql.end();
  await admin.query("DROP TABLE IF EXISTS pgw_copy_js");
  await admin.end();
  await proxy.close();
});

const ROWS = 620_000;
const line = (i: number) => `${i}\tline number ${i} padded to make fifty megabytes of copy data…..........\n`;

describe("postgres.js through pgwarden", () => {
  it("runs parameterised queries", async () => {
    expect(await sql`SELECT ${5}::int * 2 AS n, ${"tëxt"}::text AS t`).toEqual([{ n: 10, t: "tëxt" }]);
  });

  it("answers 50 pipelined queries on one connection, in order", async () => {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => sql`SELECT ${i}::int AS i`));
    expect(results.map((r) => r[0]!.i)).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it("recovers from an error inside sql.begin", async () => {
    await expect(
      sql.begin(async (tx) => {
        await tx`SELECT 1`;
        await tx`SELECT 1/0`;
      }),
    ).rejects.toMatchObject({ code: "22012" });
    expect(await sql`SELECT 'ok' AS s`).toEqual([{ s: "ok" }]);
  });

  it("copies 50 MB in with COPY FROM STDIN", async () => {
    let bytes = 0;
    async function* lines() {
      for (let i = 0; i < ROWS; i++) {
        const l = line(i);
        bytes += Buffer.byteLength(l);
        yield l;
      }
    }
    const writable = await sql`COPY pgw_copy_js (id, body) FROM STDIN`.writable();
    await pipeline(Readable.from(lines()), writable);
    expect(bytes).toBeGreaterThan(50_000_000);
    const r = await admin.query("SELECT count(*)::int AS n, sum(id)::bigint AS s FROM pgw_copy_js");
    expect(r.rows).toEqual([{ n: ROWS, s: String((ROWS * (ROWS - 1)) / 2) }]);
  }, 120_000);

  it("copies 50 MB out with COPY TO STDOUT, byte for byte", async () => {
    const readable = await sql`COPY (SELECT id, body FROM pgw_copy_js ORDER BY id) TO STDOUT`.readable();
    const hash = (await import("node:crypto")).createHash("sha256");
    let bytes = 0;
    for await (const chunk of readable) {
      bytes += (chunk as Buffer).length;
      hash.update(chunk as Buffer);
    }
    const expected = (await import("node:crypto")).createHash("sha256");
    let expectedBytes = 0;
    for (let i = 0; i < ROWS; i++) {
      const l = line(i);
      expectedBytes += Buffer.byteLength(l);
      expected.update(l);
    }
    expect(bytes).toBe(expectedBytes);
    expect(hash.digest("hex")).toBe(expected.digest("hex"));
  }, 120_000);

  it("lets PostgreSQL end a COPY on bad data without breaking the session", async () => {
    const before = (await admin.query("SELECT count(*)::int AS n FROM pgw_copy_js")).rows[0].n as number;
    const writable = await sql`COPY pgw_copy_js (id, body) FROM STDIN`.writable();
    writable.write("1\tfine\n");
    writable.write("not-a-number\tbad\n");
    writable.end("3\tnever\n");
    // postgres.js does not surface this error on the stream; PostgreSQL's ErrorResponse is checked
    // byte for byte in the differential tests. Here: nothing was copied and the session goes on.
    const session = [...proxy.server.sessions.values()][0]!;
    for (let i = 0; i < 60 && session.machine.state !== "ready.idle"; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(session.machine.state).toBe("ready.idle");
    await new Promise((r) => setTimeout(r, 100));
    expect(await sql`SELECT 'still here' AS s`).toEqual([{ s: "still here" }]);
    expect((await admin.query("SELECT count(*)::int AS n FROM pgw_copy_js")).rows[0].n).toBe(before);
    expect(proxy.logs.filter((l) => l.msg === "protocol violation")).toEqual([]);
  });
});
