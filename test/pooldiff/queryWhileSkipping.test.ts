import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "./harness.ts";

/**
 * A simple Query sent after a failed extended-protocol message and before Sync: PostgreSQL ignores
 * it (it skips everything up to Sync), so it owes no ReadyForQuery of its own.
 */
const ctx = setupDiff("pd_query_skip", { mode: "transaction", size: 1 });

describe("a Query ignored while PostgreSQL skips to Sync", () => {
  it("gives the server connection back to the pool", async () => {
    // Direct PostgreSQL: one ErrorResponse and one ReadyForQuery; the Query is ignored.
    const direct = await exchange(await ctx.direct(), [
      msg.parse("", "SELEC 1"),
      msg.query("SELECT 5"),
      msg.sync(),
    ]);
    expect(direct).toEqual(["E:42601", "Z:I"]);
    const a = await ctx.pooled();
    expect(await exchange(a, [msg.parse("", "SELEC 1"), msg.query("SELECT 5"), msg.sync()])).toEqual(direct);
    // Pool of one: another client must get the connection now that `a` is idle.
    const b = await ctx.pooled();
    const other = await Promise.race([
      simple(b, "SELECT 7"),
      new Promise<string>((r) => setTimeout(() => r("still waiting after 3 s"), 3000)),
    ]);
    expect(other).toEqual(["T[23]", 'D["7"]', "C:SELECT 1", "Z:I"]);
  });
});
