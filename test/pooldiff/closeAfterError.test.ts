import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff } from "./harness.ts";

/** A Close('S') pgwarden answers itself after an error in the same batch. */
const ctx = setupDiff("pd_close_err", { mode: "transaction", size: 1 });

describe("Close after an error in the same batch", () => {
  it("keeps the statement, as PostgreSQL skips the Close", async () => {
    // Direct PostgreSQL skips the Close after the error: b1 still runs afterwards.
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("b1", "SELECT 12"), msg.sync()]),
      await exchange(s, [
        msg.parse("", "SELECT 1/0"),
        msg.bind(""),
        msg.execute(),
        msg.closeStatement("b1"),
        msg.sync(),
      ]),
      await exchange(s, [msg.bind("b1"), msg.execute(), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[2]).toEqual(["2", 'D["12"]', "C:SELECT 1", "Z:I"]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
