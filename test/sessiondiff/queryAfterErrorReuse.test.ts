import { describe, expect, it } from "vitest";
import { encodeFunctionCall } from "../../src/protocol/frontend.ts";
import { exchange, msg, setupDiff, simple } from "../pooldiff/harness.ts";
import type { PgSession } from "../support/pgSession.ts";
import { backends, TARGET } from "../txpool/target.ts";

/**
 * Session mode: a simple Query (or FunctionCall) sent after a failed extended-protocol message
 * and before Sync is ignored by PostgreSQL (it skips everything up to Sync), so only the Sync's
 * ReadyForQuery comes. pgwarden counts the Query as a sync point still owed, so its server
 * connection never looks clean again: when the client leaves at ReadyForQuery I it is closed
 * instead of reset (DISCARD ALL) and reused, which docs/pooling.md promises ("at disconnect, after
 * pool.resetQuery succeeds"; transaction mode already follows "a simple query sent after an
 * extended-protocol error and before Sync is ignored (it owes no ReadyForQuery)"). PgBouncer
 * reuses it. A pool of one: the next client must get the same backend (its BackendKeyData
 * carries the real PID in session mode, and pg_backend_pid() says the same).
 */
const ctx = setupDiff("sd_qerr", { mode: "session", size: 1 });

/** pg_backend_pid() by OID, as a FunctionCall. */
const functionCall = encodeFunctionCall({ functionOid: 2026, argFormats: [], args: [], resultFormat: 0 });

/** Leaves the client cleanly and returns the backend the next client gets. */
const nextBackend = async (leaving: PgSession): Promise<number> => {
  leaving.terminate();
  await leaving.wire.waitClosed(3000).catch(() => {});
  const next = await ctx.pooled();
  const pid = await next.backendPid();
  // pgwarden's session mode hands out the backend's real PID (docs/pooling.md); PgBouncer does not.
  if (TARGET === "pgwarden") expect(next.processId).toBe(pid);
  next.terminate();
  await next.wire.waitClosed(3000).catch(() => {});
  return pid;
};

const CASES: { name: string; batch: Buffer[] }[] = [
  {
    name: "a Query after a failed Parse",
    batch: [msg.parse("", "SELEC 1"), msg.query("SELECT 5"), msg.sync()],
  },
  {
    name: "a Query after a Bind of a statement that does not exist",
    batch: [msg.bind("no_such_statement"), msg.execute(), msg.query("SELECT 5"), msg.sync()],
  },
  {
    name: "two Queries after a failed Execute",
    batch: [
      msg.parse("", "SELECT 1/0"),
      msg.bind(""),
      msg.execute(),
      msg.query("SELECT 5"),
      msg.query("SELECT 6"),
      msg.sync(),
    ],
  },
  {
    name: "a FunctionCall after a failed Parse",
    batch: [msg.parse("", "SELEC 1"), functionCall, msg.sync()],
  },
];

describe("session mode: a Query ignored while PostgreSQL skips to Sync", () => {
  it("control: a client that ends cleanly after an error leaves its backend to the next client", async () => {
    const a = await ctx.pooled();
    const pid = await a.backendPid();
    expect(await exchange(a, [msg.parse("", "SELEC 1"), msg.sync()])).toEqual(["E:42601", "Z:I"]);
    expect(await nextBackend(a)).toBe(pid);
  });

  // Known, left: session mode does not follow PostgreSQL's replies message by message (transaction
  // mode does), so it cannot tell a Query PostgreSQL skipped from one that failed. The client's
  // answers are right; only the backend is closed rather than reused. PostgreSQL 18 itself
  // mishandles a Query inside an extended batch (XX000 on the next statement), so clients cannot
  // rely on the pattern. Unskip with the fix.
  for (const c of CASES)
    it.skip(`${c.name}: answered as PostgreSQL answers it, and the backend is reused by the next client`, async () => {
      const direct = await ctx.direct();
      const expected = [await exchange(direct, c.batch), await simple(direct, "SELECT 6")];
      expect(expected[0]!.slice(-1)).toEqual(["Z:I"]);
      expect(expected[0]!.filter((t) => t.startsWith("Z:"))).toHaveLength(1);
      direct.terminate();
      const a = await ctx.pooled();
      const pid = await a.backendPid();
      expect([await exchange(a, c.batch), await simple(a, "SELECT 6")]).toEqual(expected);
      const started = (await backends(ctx.fixture)).find((b) => b.pid === pid)?.started;
      // The client ended at ReadyForQuery I with nothing owed: the same backend serves the next one.
      expect(await nextBackend(a)).toBe(pid);
      expect((await backends(ctx.fixture)).find((b) => b.pid === pid)?.started).toBe(started);
    });
});
