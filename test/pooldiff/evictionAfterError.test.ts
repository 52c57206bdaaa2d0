import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff } from "./harness.ts";

/**
 * With perServerCapacity 1, a Bind after an error in its batch makes pgwarden inject an eviction
 * Close and a re-Parse; PostgreSQL skips both, but the Close is counted as done.
 */
const ctx = setupDiff("pd_evict_err", {
  mode: "transaction",
  size: 1,
  preparedStatements: { enabled: true, perServerCapacity: 1 },
});

describe("an eviction PostgreSQL skipped after an error", () => {
  it("does not leave the server holding a statement pgwarden thinks is gone", async () => {
    // Direct PostgreSQL: the Bind of s0 is skipped after the error; s1 then runs normally.
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("s0", "SELECT 'zero'::text"), msg.sync()]),
      await exchange(s, [msg.parse("s1", "SELECT 'one'::text"), msg.sync()]),
      await exchange(s, [
        msg.parse("", "SELECT 1/0"),
        msg.bind(""),
        msg.execute(),
        msg.bind("s0"),
        msg.execute(),
        msg.sync(),
      ]),
      await exchange(s, [msg.bind("s1"), msg.execute(), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[3]).toEqual(["2", 'D["one"]', "C:SELECT 1", "Z:I"]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
