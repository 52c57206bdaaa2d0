import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "./harness.ts";

/**
 * Errors pgwarden answers itself (Bind of an unknown statement: 26000; Parse of an existing name:
 * 42P05) must fail the transaction they happen in, as PostgreSQL's own would.
 */
const ctx = setupDiff("pd_local_err", { mode: "transaction", size: 1 });

describe("an error pgwarden answers locally", () => {
  it("aborts an explicit transaction: ReadyForQuery E, and COMMIT rolls back", async () => {
    // Direct PostgreSQL: 26000 then ReadyForQuery 'E'; COMMIT answers ROLLBACK.
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await simple(s, "BEGIN"),
      await exchange(s, [msg.bind("nope"), msg.execute(), msg.sync()]),
      await simple(s, "COMMIT"),
    ];
    const direct = await program(await ctx.direct());
    expect(direct).toEqual([
      ["C:BEGIN", "Z:T"],
      ["E:26000", "Z:E"],
      ["C:ROLLBACK", "Z:I"],
    ]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });

  it("rolls back the implicit transaction of its batch (an INSERT before it is not committed)", async () => {
    await ctx.admin(`CREATE TABLE local_err (v int); GRANT ALL ON local_err TO ${ctx.fixture.roles[0]}`);
    // Direct PostgreSQL: the error rolls back the whole Parse…Sync batch, so the INSERT is undone.
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("dup", "SELECT 1"), msg.sync()]),
      await exchange(s, [
        msg.parse("", "INSERT INTO local_err VALUES (1)"),
        msg.bind(""),
        msg.execute(),
        msg.parse("dup", "SELECT 2"),
        msg.sync(),
      ]),
      await simple(s, "SELECT count(*) FROM local_err; DELETE FROM local_err"),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[1]).toEqual(["1", "2", "C:INSERT 0 1", "E:42P05", "Z:I"]);
    expect(direct[2]).toContain('D["0"]');
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
