import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { msg, PgSession, typesOf } from "../support/pgSession.ts";
import { postgresInfo } from "../support/postgres.ts";
import { createFixture, type Fixture, type PooledTarget, startTarget } from "../txpool/target.ts";

/**
 * After an error in an extended-protocol batch PostgreSQL discards every message up to Sync —
 * a simple Query among them, which then gets no ReadyForQuery. pgwarden counts that Query as a
 * sync point still owed: it waits for a ReadyForQuery that never comes, the client's next
 * statement gets no answer, and in transaction mode the server connection is never given back.
 * The same bytes go to PostgreSQL directly and through pgwarden; the answers must match.
 */

const BATCH = [msg.execute("no_such_portal"), msg.query("SELECT 'discarded'"), msg.sync()];

describe("a Query inside a batch PostgreSQL is skipping after an error", () => {
  let fixture: Fixture;
  let target: PooledTarget | undefined;
  beforeAll(async () => {
    fixture = await createFixture("hskipq");
  });
  afterEach(async () => {
    await target?.stop();
    target = undefined;
  });

  const login = (port: number) =>
    PgSession.login({ port, user: fixture.roles[0], database: fixture.database, password: fixture.password });

  /** The batch, then a plain query: message types of each answer, or where it stalled. */
  const run = async (port: number): Promise<string[]> => {
    const s = await login(port);
    try {
      const out = [typesOf(await s.exchange(BATCH, 1, 3000))];
      out.push(
        await s.exchange([msg.query("SELECT 'after'")], 1, 3000).then(typesOf, (e: Error) => e.message),
      );
      return out;
    } finally {
      s.vanish();
    }
  };

  for (const mode of ["session", "transaction"] as const)
    it(`${mode} mode: answered as PostgreSQL answers it, and the pool's only connection comes back`, async () => {
      const direct = await run(postgresInfo().port);
      expect(direct).toEqual(["E Z", "T D C Z"]);
      target = await startTarget(fixture, { pool: { mode, size: 1, queryWaitTimeoutMs: 2000 } });
      expect(await run(target.port)).toEqual(direct);
      const next = await login(target.port);
      try {
        expect((await next.query("SELECT 'next client'", 5000)).rows).toEqual([["next client"]]);
      } finally {
        next.vanish();
      }
    });
});
