import { describe, expect, it } from "vitest";
import {
  encodeBind,
  encodeExecute,
  encodeFlush,
  encodeParse,
  encodeSync,
} from "../../src/protocol/frontend.ts";
import { sleep } from "../support/hostile.ts";
import { errorOf, type PgSession } from "../support/pgSession.ts";
import { pooledClients } from "../support/pooledClients.ts";

/**
 * Transaction mode, one server connection. A client that sends part of an extended batch and
 * never its Sync keeps the server inside the implicit transaction PostgreSQL opened for the
 * batch; no ReadyForQuery comes to arm the idle-in-transaction timer at, so before this test
 * such a client held the pool's only connection for as long as it liked. It is idle in a
 * transaction all the same, and the same timeouts end it — but not while PostgreSQL is still
 * working for it.
 */

const parse = (query: string) => encodeParse({ name: "", query, paramTypes: [] });
const bind = () => encodeBind({ portal: "", statement: "", paramFormats: [], params: [], resultFormats: [] });
const execute = () => encodeExecute({ portal: "", maxRows: 0 });

/** Resolves once the session's socket has closed, with the error it got last. */
const endedWith = async (s: PgSession, ms: number): Promise<string | undefined> => {
  const deadline = Date.now() + ms;
  while (!s.closed && Date.now() < deadline) await sleep(20);
  if (!s.closed) return undefined;
  const e = s.pending().filter((m) => m.type === "E");
  return e.length === 0 ? "closed without an error" : errorOf(e.at(-1)!).code;
};

describe("a pooled client that never sends its Sync", () => {
  const session = pooledClients(
    "unsynced",
    { pool: { mode: "transaction", size: 1, idleInTransactionTimeoutMs: 400, queryWaitTimeoutMs: 5000 } },
    "perTest",
  );

  for (const [what, bytes] of [
    ["a Parse alone (no Flush: PostgreSQL holds its answer)", [parse("SELECT 1")]],
    ["a Parse and a Flush (answered, then nothing)", [parse("SELECT 1"), encodeFlush()]],
    ["Parse, Bind, Execute and a Flush", [parse("SELECT 1"), bind(), execute(), encodeFlush()]],
  ] as const) {
    it(`${what} is ended by the idle-in-transaction timeout and frees the connection`, async () => {
      const hostile = await session();
      const other = await session();
      expect(await hostile.value("SELECT 'warm'")).toBe("warm");
      const started = Date.now();
      hostile.send(...bytes);
      expect(await endedWith(hostile, 3000)).toBe("25P03");
      expect(Date.now() - started).toBeGreaterThanOrEqual(350);
      const r = await other.query("SELECT 'served'", 5000);
      expect(r.error).toBeUndefined();
      expect(r.rows).toEqual([["served"]]);
    });
  }

  it("is not ended while PostgreSQL is still executing what it flushed", async () => {
    const s = await session();
    s.send(parse("SELECT pg_sleep(1.0), 'slept'"), bind(), execute(), encodeFlush());
    await sleep(1400);
    expect(s.closed).toBe(false);
    expect(s.pending().map((m) => m.type)).toEqual(["1", "2", "D", "C"]);
    s.send(encodeSync());
    const rest = await s.untilReady(3000);
    expect(rest.at(-1)!.type).toBe("Z");
    expect(await s.value("SELECT 'still fine'")).toBe("still fine");
  });

  it("a client that keeps sending is not idle", async () => {
    const s = await session();
    s.send(parse("SELECT 1"), encodeFlush());
    for (let i = 0; i < 5; i++) {
      await sleep(200);
      s.send(bind(), execute(), encodeFlush());
    }
    expect(s.closed).toBe(false);
    s.send(encodeSync());
    await s.untilReady(3000);
    expect(await s.value("SELECT 'ok'")).toBe("ok");
  });
});

describe("the transaction timeout covers an unsynced batch too", () => {
  const session = pooledClients(
    "unsyncedtx",
    { pool: { mode: "transaction", size: 1, transactionTimeoutMs: 600 } },
    "perTest",
  );

  it("a client that trickles extended messages without a Sync is ended with 25P04", async () => {
    const s = await session();
    s.send(parse("SELECT 1"), encodeFlush());
    const stop = Date.now() + 3000;
    while (!s.closed && Date.now() < stop) {
      await sleep(150);
      if (!s.closed) s.send(bind(), execute(), encodeFlush());
    }
    expect(await endedWith(s, 100)).toBe("25P04");
  });
});
