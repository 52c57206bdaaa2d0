import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff } from "./harness.ts";

/** A Parse pgwarden answers itself (the server already has the text) after an error in the same batch. */
const ctx = setupDiff("pd_parse_err", { mode: "transaction", size: 1 });

describe("Parse after an error in the same batch", () => {
  it("leaves no statement behind, as PostgreSQL skips it", async () => {
    // Direct PostgreSQL skips every message after the error up to Sync: a2 never exists (26000).
    const program = async (s: Awaited<ReturnType<typeof ctx.pooled>>) => [
      await exchange(s, [msg.parse("a1", "SELECT 11"), msg.sync()]),
      await exchange(s, [
        msg.parse("", "SELECT 1/0"),
        msg.bind(""),
        msg.execute(),
        msg.parse("a2", "SELECT 11"),
        msg.sync(),
      ]),
      await exchange(s, [msg.bind("a2"), msg.execute(), msg.sync()]),
    ];
    const direct = await program(await ctx.direct());
    expect(direct[2]).toEqual(["E:26000", "Z:I"]);
    expect(await program(await ctx.pooled())).toEqual(direct);
  });
});
