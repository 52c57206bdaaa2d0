import { describe, expect, it } from "vitest";
import { encodeCopyData, encodeCopyDone, encodeTerminate } from "../../src/protocol/frontend.ts";
import { msg, setupDiff, simple, traceOf } from "../pooldiff/harness.ts";
import type { PoolMode } from "../txpool/target.ts";

/**
 * A COPY FROM STDIN that PostgreSQL refuses (no such table) is answered with ErrorResponse and
 * ReadyForQuery; CopyData and CopyDone the client sends after it are ignored by PostgreSQL, and
 * docs/pooling.md says pgwarden drops them and that they hold no server connection. Here they
 * arrive in one write with the client's Terminate. Found by model.test.ts (statement mode) and
 * reduced by delta debugging: pgwarden checks a server connection out for the stray bytes and the
 * pool's idle list then holds that connection twice (seen in Pool.idleCount: 2 idle of 1 open;
 * likely Link.onClientData's releaseIfIdle() after the Terminate already had the client connection
 * release it). The next two clients then get the same backend: the second finds it busy and
 * closes it under the first (PostgreSQL, in the middle of the first client's COPY, reads a
 * Terminate: 08P01 "unexpected message type 0x58 during COPY from stdin" for a client that did
 * nothing wrong). With 50 ms between the copy messages and the Terminate nothing goes wrong.
 * Session mode relays the stray messages to PostgreSQL and is a control. PgBouncer passes.
 */

for (const mode of ["statement", "transaction", "session"] as const satisfies readonly PoolMode[]) {
  describe(`${mode} mode: stray copy messages sent with the Terminate`, () => {
    const ctx = setupDiff(`sd_stray_${mode.slice(0, 2)}`, { mode, size: 2 });

    it("leave the pool's connections each serving one client", async () => {
      await ctx.admin("CREATE TABLE sd_copy (a int)");
      // Direct PostgreSQL: the refused COPY; the copy messages after it answer nothing.
      const d = await ctx.direct();
      expect(traceOf(await d.exchange([msg.query("COPY sd_nope FROM STDIN")]))).toEqual(["E:42P01", "Z:I"]);
      d.send(encodeCopyData(Buffer.from("1\n")), encodeCopyDone());
      expect(await simple(d, "SELECT 1")).toEqual(["T[23]", 'D["1"]', "C:SELECT 1", "Z:I"]);

      const s = await ctx.pooled();
      expect(traceOf(await s.exchange([msg.query("COPY sd_nope FROM STDIN")]))).toEqual(["E:42P01", "Z:I"]);
      s.send(encodeCopyData(Buffer.from("1\n")), encodeCopyDone(), encodeTerminate());
      await s.wire.waitClosed(3000);

      // One client inside a COPY FROM STDIN, then another client's statement: each must get its
      // own answer.
      const busy = await ctx.pooled();
      const other = await ctx.pooled();
      busy.send(msg.query("COPY sd_copy FROM STDIN"));
      await busy.wire.until(() => busy.pending().some((m) => m.type === "G" || m.type === "E"), 3000);
      expect(await simple(other, "SELECT 2")).toEqual(["T[23]", 'D["2"]', "C:SELECT 1", "Z:I"]);
      const copied = await busy
        .exchange([encodeCopyData(Buffer.from("1\n")), encodeCopyDone()], 1, 3000)
        .then(traceOf, (e: Error) => e.message);
      expect(copied).toEqual(["G", "C:COPY 1", "Z:I"]);
    });
  });
}
