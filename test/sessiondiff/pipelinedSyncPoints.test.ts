import { describe, expect, it } from "vitest";
import { msg, setupDiff, traceOf } from "../pooldiff/harness.ts";

/**
 * Statement and transaction mode, pool of one: three clients at once each write one pipeline of
 * nine sync points (simple Queries, extended batches with named and unnamed statements, an error,
 * SET and RESET) in a single write. pgwarden must serve them one sync point at a time on the one
 * connection, keep each client's settings and statements its own, and answer each client in
 * order exactly as its own PostgreSQL connection does. (A Query in the middle of an extended
 * batch is left out: PostgreSQL 18 answers it with ReadyForQuery T and then fails the session's
 * next statement with XX000 "StartTransactionCommand: unexpected state STARTED" — on a direct
 * connection too; in a pool the next client of that backend gets the XX000.)
 */

const pipeline = (v: string) => [
  msg.query(`SET work_mem = '${v}'`),
  msg.query("SHOW work_mem"),
  msg.parse("", "SELECT current_setting('work_mem')"),
  msg.bind(""),
  msg.execute(),
  msg.sync(),
  msg.parse("q", "SELECT $1::text || current_setting('work_mem')"),
  msg.bind("q", ["x"]),
  msg.execute(),
  msg.sync(),
  msg.query("SELECT 1/0"),
  msg.bind("q", ["y"]),
  msg.execute(),
  msg.sync(),
  msg.query("RESET work_mem; SHOW work_mem"),
  msg.query("SELECT 2"),
  msg.bind("q", ["z"]),
  msg.execute(),
  msg.sync(),
];
const SYNC_POINTS = 9;
const VALUES = ["2MB", "3MB", "5MB"];

for (const mode of ["statement", "transaction"] as const)
  describe(`${mode} mode, pool of one: pipelined sync points from three clients`, () => {
    const ctx = setupDiff(`sd_pipe_${mode.slice(0, 2)}`, { mode, size: 1 });

    it("each client is answered as its own PostgreSQL connection answers it", async () => {
      const direct = await Promise.all(
        VALUES.map(async (v) => traceOf(await (await ctx.direct()).exchange(pipeline(v), SYNC_POINTS))),
      );
      for (let round = 0; round < 3; round++) {
        const pooled = await Promise.all(
          VALUES.map(async (v) => {
            const s = await ctx.pooled();
            try {
              return await s
                .exchange(pipeline(v), SYNC_POINTS, 3000)
                .then(traceOf, (e: Error) => [e.message]);
            } finally {
              s.terminate();
            }
          }),
        );
        expect(pooled).toEqual(direct);
      }
    });
  });
