import { describe, expect, it } from "vitest";
import { msg, setupDiff, simple, traceOf } from "../pooldiff/harness.ts";
import { errorOf } from "../support/pgSession.ts";
import { TARGET } from "../txpool/target.ts";

/**
 * Statement mode, pool of one: a transaction block ends its client with FATAL 0A000 once
 * PostgreSQL reports ReadyForQuery `T` (PgBouncer ends it too, with 08P01); what ran before it in the same
 * request is answered as PostgreSQL answers it, and the next client does not inherit the open
 * transaction (the server connection is not clean, so it is closed). Statements that only look
 * like transaction control, or implicit transactions of one request (several statements in one
 * Query, several Executes before one Sync), are not refused: they answer as on a direct connection.
 */
const ctx = setupDiff("sd_stmt", { mode: "statement", size: 1 });

const REFUSED: { name: string; messages: Buffer[]; before: string[] }[] = [
  { name: "BEGIN", messages: [msg.query("BEGIN")], before: ["C:BEGIN"] },
  { name: "START TRANSACTION", messages: [msg.query("START TRANSACTION")], before: ["C:START TRANSACTION"] },
  {
    name: "BEGIN inside a query of several statements",
    messages: [msg.query("SELECT 1; BEGIN; SELECT 2")],
    before: ["T[23]", 'D["1"]', "C:SELECT 1", "C:BEGIN", "T[23]", 'D["2"]', "C:SELECT 1"],
  },
  {
    name: "BEGIN through the extended protocol",
    messages: [msg.parse("", "BEGIN"), msg.bind(""), msg.execute(), msg.sync()],
    before: ["1", "2", "C:BEGIN"],
  },
];

const ALLOWED: { name: string; messages: Buffer[] }[] = [
  { name: "SAVEPOINT outside a block", messages: [msg.query("SAVEPOINT a")] },
  { name: "COMMIT outside a block", messages: [msg.query("COMMIT")] },
  { name: "ROLLBACK outside a block", messages: [msg.query("ROLLBACK")] },
  { name: "two statements in one Query", messages: [msg.query("SELECT 1; SELECT 2")] },
  { name: "a failing statement among several", messages: [msg.query("SELECT 1; SELECT 1/0; SELECT 2")] },
  {
    name: "two Executes before one Sync",
    messages: [
      msg.parse("", "SELECT 1"),
      msg.bind(""),
      msg.execute(),
      msg.parse("", "SELECT 2"),
      msg.bind(""),
      msg.execute(),
      msg.sync(),
    ],
  },
  { name: "a DO block", messages: [msg.query("DO $$ BEGIN PERFORM 1; END $$")] },
];

describe("statement mode", () => {
  for (const c of REFUSED)
    it(`${c.name}: FATAL 0A000 after what PostgreSQL answered, and the next client is outside any transaction`, async () => {
      const s = await ctx.pooled();
      const replies = await s.exchange(c.messages);
      // PgBouncer drops the CommandComplete and says 08P01 instead; pgwarden's is documented as 0A000.
      if (TARGET === "pgwarden") expect(traceOf(replies)).toEqual([...c.before, "E:0A000"]);
      expect(errorOf(replies.at(-1)!).severity).toBe("FATAL");
      await s.wire.waitClosed(3000);
      const next = await ctx.pooled();
      expect(await simple(next, "SAVEPOINT a")).toEqual(["E:25P01", "Z:I"]);
      next.terminate();
    });

  for (const c of ALLOWED)
    it(`${c.name}: answered as PostgreSQL answers it`, async () => {
      const direct = traceOf(await (await ctx.direct()).exchange(c.messages));
      const s = await ctx.pooled();
      expect(traceOf(await s.exchange(c.messages))).toEqual(direct);
      expect(s.closed).toBe(false);
      s.terminate();
    });
});
