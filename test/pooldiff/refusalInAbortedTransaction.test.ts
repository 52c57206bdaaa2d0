import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "./harness.ts";

/**
 * Requests pgwarden refuses itself — a Parse of a name the client already holds (42P05) — inside
 * a transaction that is already aborted. PostgreSQL judges the aborted transaction first: every
 * such request gets 25P02, whatever else is wrong with it, so a pooled client must see 25P02 too.
 */
const ctx = setupDiff("pd_refuse_abort", { mode: "transaction", size: 1 });

describe("a refused request inside an aborted transaction", () => {
  it("a duplicate Parse gets 25P02, as PostgreSQL answers it", async () => {
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await simple(s, "BEGIN"),
      await exchange(s, [msg.parse("d1", "SELECT 1"), msg.sync()]),
      await simple(s, "SELECT 1/0"),
      await exchange(s, [msg.parse("d1", "SELECT 2"), msg.sync()]),
      await simple(s, "ROLLBACK"),
      await exchange(s, [msg.bind("d1"), msg.execute(), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[3]).toEqual(["E:25P02", "Z:E"]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });

  it("outside an aborted transaction the duplicate is still 42P05", async () => {
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("d2", "SELECT 1"), msg.sync()]),
      await exchange(s, [msg.parse("d2", "SELECT 2"), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[1]).toEqual(["E:42P05", "Z:I"]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
