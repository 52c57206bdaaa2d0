import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "./harness.ts";

/** SQL DEALLOCATE of a statement the client prepared with the protocol's Parse. */
const ctx = setupDiff("pd_dealloc", { mode: "transaction", size: 1 });

describe("DEALLOCATE name of a protocol-level statement", () => {
  it("drops it, as on PostgreSQL", async () => {
    // Direct PostgreSQL: DEALLOCATE succeeds and a later Bind of g1 fails with 26000.
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("g1", "SELECT 1"), msg.sync()]),
      await simple(s, "DEALLOCATE g1"),
      await exchange(s, [msg.bind("g1"), msg.execute(), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct.slice(1)).toEqual([
      ["C:DEALLOCATE", "Z:I"],
      ["E:26000", "Z:I"],
    ]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
