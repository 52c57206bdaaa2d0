import { describe, expect, it } from "vitest";
import { encodeCopyData, encodeCopyDone } from "../../src/protocol/frontend.ts";
import { type DiffContext, msg, setupDiff, traceOf } from "../pooldiff/harness.ts";
import type { PgSession } from "../support/pgSession.ts";
import type { PoolMode } from "../txpool/target.ts";

/**
 * COPY FROM STDIN with the data pipelined: the client writes the COPY and its CopyData/CopyDone
 * without waiting for CopyInResponse. PostgreSQL reads its input in order, so the data lands in
 * the COPY (it ignores copy messages only when it reads them outside a COPY). pgwarden judges
 * each client message when it arrives instead, before PostgreSQL has answered:
 *  - session mode relays the bytes, but its state machine expects the client's CopyDone after the
 *    CopyInResponse; with two such COPYs in one extended-protocol batch the second
 *    CopyInResponse is "out of turn in state busy.copy.in" and the session ends with 08P01;
 *  - transaction and statement mode drop CopyData/CopyDone that arrive "outside COPY"
 *    (docs/pooling.md), so PostgreSQL waits in the COPY for ever and the client gets no answer.
 * PgBouncer relays the bytes as they are, so both work through it as on a direct connection.
 * Found by model.test.ts. Controls: the same COPYs with the data sent after CopyInResponse.
 */

const TABLE = "CREATE TABLE sd_copy (a int)";
const data = [encodeCopyData(Buffer.from("1\n")), encodeCopyDone()];
const extendedCopy = [msg.parse("", "COPY sd_copy FROM STDIN"), msg.bind(""), msg.execute()];

/** The trace, or what stopped it (a pooler that drops the data leaves the client waiting). */
const run = (s: PgSession, messages: Buffer[]) =>
  s.exchange(messages, 1, 2000).then(traceOf, (e: Error) => e.message.replace(/; got so far.*/, ""));

/** Sends each part once PostgreSQL has sent as many CopyInResponses as parts before it; the trace. */
const stepwise = async (s: PgSession, parts: Buffer[][]): Promise<string[]> => {
  for (const [i, part] of parts.entries()) {
    if (i > 0)
      await s.wire.until(() => s.pending().filter((m) => m.type === "G").length >= i, 2000, "CopyInResponse");
    s.send(...part);
  }
  return traceOf(await s.untilReady(2000));
};

/** Runs `test` on a direct and a pooled session, ending both. */
const both = async <T>(ctx: DiffContext, test: (s: PgSession) => Promise<T>): Promise<[T, T]> => {
  const d = await ctx.direct();
  const p = await ctx.pooled();
  try {
    return [await test(d), await test(p)];
  } finally {
    d.vanish();
    p.vanish();
  }
};

describe("session mode: two COPY FROM STDIN in one extended batch, data pipelined", () => {
  const ctx = setupDiff("sd_copy_se", { mode: "session", size: 2 });
  const batch = [...extendedCopy, ...data, ...extendedCopy, ...data, msg.sync()];

  it("is answered as PostgreSQL answers it", async () => {
    await ctx.admin(TABLE);
    const [direct, pooled] = await both(ctx, (s) => run(s, batch));
    expect(direct).toEqual(["1", "2", "G", "C:COPY 1", "1", "2", "G", "C:COPY 1", "Z:I"]);
    expect(pooled).toEqual(direct);
  });

  it("control: the same COPYs with the data sent after each CopyInResponse", async () => {
    const parts = [
      [...extendedCopy, msg.flush()],
      [...data, ...extendedCopy, msg.flush()],
      [...data, msg.sync()],
    ];
    const [direct, pooled] = await both(ctx, (s) => stepwise(s, parts));
    expect(direct).toEqual(["1", "2", "G", "C:COPY 1", "1", "2", "G", "C:COPY 1", "Z:I"]);
    expect(pooled).toEqual(direct);
  });
});

for (const mode of ["transaction", "statement", "session"] as const satisfies readonly PoolMode[]) {
  describe(`${mode} mode: a simple-query COPY FROM STDIN with its data in the same write`, () => {
    const ctx = setupDiff(`sd_copy_q${mode.slice(0, 2)}`, { mode, size: 2 });

    it("is answered as PostgreSQL answers it", async () => {
      await ctx.admin(TABLE);
      const [direct, pooled] = await both(ctx, (s) =>
        run(s, [msg.query("COPY sd_copy FROM STDIN"), ...data]),
      );
      expect(direct).toEqual(["G", "C:COPY 1", "Z:I"]);
      expect(pooled).toEqual(direct);
    });

    it("control: the data sent after CopyInResponse", async () => {
      const [direct, pooled] = await both(ctx, (s) =>
        stepwise(s, [[msg.query("COPY sd_copy FROM STDIN")], data]),
      );
      expect(direct).toEqual(["G", "C:COPY 1", "Z:I"]);
      expect(pooled).toEqual(direct);
    });
  });
}
