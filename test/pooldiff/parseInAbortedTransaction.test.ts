import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "./harness.ts";

/** A Parse pgwarden answers itself while the client's transaction is aborted. */
const ctx = setupDiff("pd_parse_abort", { mode: "transaction", size: 1 });

describe("Parse inside an aborted transaction", () => {
  it("fails with 25P02 and creates nothing", async () => {
    // Direct PostgreSQL answers 25P02 (in failed transaction) and x2 never exists (26000 later).
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("x1", "SELECT 21"), msg.sync()]),
      await simple(s, "BEGIN; SELECT 1/0"),
      await exchange(s, [msg.parse("x2", "SELECT 21"), msg.sync()]),
      await simple(s, "ROLLBACK"),
      await exchange(s, [msg.bind("x2"), msg.execute(), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[2]).toEqual(["E:25P02", "Z:E"]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
