import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { msg, PgSession, typesOf } from "../support/pgSession.ts";
import { postgresInfo } from "../support/postgres.ts";
import { createFixture, type Fixture, type PooledTarget, startTarget } from "../txpool/target.ts";

/**
 * Transaction mode: a message naming a statement whose Parse (before an earlier Sync) is still
 * unanswered is held, with everything after it, until every reply before it is in. When an
 * extended-protocol message was forwarded after that Sync, PostgreSQL holds its reply back until
 * a Sync or Flush — which pgwarden is holding. Neither side moves: a valid pipeline (as pipelining
 * drivers send it, in one write) never gets its answer. PostgreSQL answers it at once.
 */

const PIPELINES: [string, Buffer[]][] = [
  [
    "Parse s1, Sync, Parse s2, Bind s1, Execute, Sync",
    [
      msg.parse("hold_s1", "SELECT 1"),
      msg.sync(),
      msg.parse("hold_s2", "SELECT 2"),
      msg.bind("hold_s1"),
      msg.execute(),
      msg.sync(),
    ],
  ],
  [
    "Parse s1, Sync, unnamed Parse/Bind/Execute, Bind s1, Execute, Sync",
    [
      msg.parse("hold_s1", "SELECT 1"),
      msg.sync(),
      msg.parse("", "SELECT 2"),
      msg.bind(""),
      msg.execute(),
      msg.bind("hold_s1"),
      msg.execute(),
      msg.sync(),
    ],
  ],
];

describe("a pipeline whose Bind waits for an earlier Parse (transaction mode)", () => {
  let fixture: Fixture;
  let target: PooledTarget;
  beforeAll(async () => {
    fixture = await createFixture("hholdparse");
    target = await startTarget(fixture, { pool: { mode: "transaction", size: 2 } });
  });
  afterAll(() => target?.stop());

  const answers = async (port: number, pipeline: Buffer[]): Promise<string> => {
    const s = await PgSession.login({
      port,
      user: fixture.roles[0],
      database: fixture.database,
      password: fixture.password,
    });
    try {
      return await s.exchange(pipeline, 2, 3000).then(typesOf, (e: Error) => e.message);
    } finally {
      s.vanish();
    }
  };

  for (const [what, pipeline] of PIPELINES)
    it(`${what}: answered in full, as PostgreSQL answers it`, async () => {
      const direct = await answers(postgresInfo().port, pipeline);
      expect(direct).toMatch(/ Z$/);
      expect(await answers(target.port, pipeline)).toBe(direct);
    });
});
