import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sleep } from "../support/hostile.ts";
import type { PgSession, QueryResult } from "../support/pgSession.ts";
import { createFixture, type Fixture, type PooledTarget, startTarget, targetMissing } from "./target.ts";

/**
 * Cancel in transaction mode with one server connection shared by everybody: a cancel reaches the
 * query its client is running, and a cancel that arrives after that query finished cancels
 * nothing, even though by then the same backend runs somebody else's query.
 */

const skip = targetMissing();
const ROUNDS = 100;

describe.skipIf(skip !== undefined)(`cancel with a pool of one (${skip ?? "running"})`, () => {
  let fixture: Fixture;
  let target: PooledTarget;
  const open: PgSession[] = [];
  const session = async () => {
    const s = await target.session(fixture.roles[0]);
    open.push(s);
    return s;
  };

  beforeAll(async () => {
    fixture = await createFixture("cancel");
    target = await startTarget(fixture, { pool: { mode: "transaction", size: 1 } });
  });

  afterAll(async () => {
    for (const s of open) s.vanish();
    await target?.stop();
  });

  it("cancels the client's own running query (57014)", async () => {
    const s = await session();
    const running = s.query("SELECT pg_sleep(20)", 15_000);
    await sleep(300);
    await s.cancel();
    const r = await running;
    expect(r.error?.code).toBe("57014");
    expect(await s.value("SELECT 'after cancel'")).toBe("after cancel");
  });

  it("a cancel that arrives after its query finished never cancels another client's query", async () => {
    const victim = await session();
    const next = await session();
    const busy = [await session(), await session(), await session()];
    const innocent: QueryResult[] = [];
    let stop = false;
    // Other clients keep the one server connection busy all along.
    const background = busy.map(async (s) => {
      while (!stop) innocent.push(await s.query("SELECT pg_sleep(0.002)"));
    });
    try {
      for (let i = 0; i < ROUNDS; i++) {
        const own = await victim.query("SELECT 1");
        expect(own.error).toBeUndefined();
        // The query is done; its cancel races the next client's query for the same backend.
        const cancelled = victim.cancel();
        const theirs = next.query("SELECT pg_sleep(0.02)");
        innocent.push(await theirs);
        await cancelled;
      }
    } finally {
      stop = true;
      await Promise.all(background);
    }
    const hit = innocent.filter((r) => r.error?.code === "57014").length;
    expect({
      hit,
      other: innocent.filter((r) => r.error !== undefined && r.error.code !== "57014").length,
    }).toEqual({
      hit: 0,
      other: 0,
    });
    expect(innocent.length).toBeGreaterThan(ROUNDS);
  }, 120_000);
});
