import type pg from "pg";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { msg, PgSession, type Reply, typesOf } from "../support/pgSession.ts";
import { postgresInfo } from "../support/postgres.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  superuserIn,
} from "../txpool/target.ts";

/**
 * Transaction mode answers some errors itself (26000 for a Bind of a statement the client never
 * prepared, 42P05 for a name prepared twice). PostgreSQL's error aborts the implicit transaction
 * of the batch (and marks an explicit one failed), so an INSERT executed earlier in the same batch
 * is rolled back. pgwarden's local error leaves PostgreSQL's transaction intact: the client is
 * told the batch failed while its INSERT is committed. Each case runs the same bytes against
 * PostgreSQL directly and through pgwarden; the outcomes must match.
 */

const INSERT = "INSERT INTO local_err (tag) VALUES ($1)";

const CASES: { name: string; batch: (tag: string) => Buffer[][] }[] = [
  {
    name: "INSERT, then a Bind of a statement never prepared (26000), Sync",
    batch: (tag) => [
      [
        msg.parse("", INSERT),
        msg.bind("", [tag]),
        msg.execute(),
        msg.bind("never_prepared"),
        msg.execute(),
        msg.sync(),
      ],
    ],
  },
  {
    name: "INSERT, then the same statement name prepared twice (42P05), Sync",
    batch: (tag) => [
      [
        msg.parse("twice", "SELECT 1"),
        msg.parse("", INSERT),
        msg.bind("", [tag]),
        msg.execute(),
        msg.parse("twice", "SELECT 2"),
        msg.sync(),
      ],
    ],
  },
  {
    name: "BEGIN; INSERT, Bind of a statement never prepared, Sync; COMMIT",
    batch: (tag) => [
      [msg.query("BEGIN")],
      [
        msg.parse("", INSERT),
        msg.bind("", [tag]),
        msg.execute(),
        msg.bind("never_prepared"),
        msg.execute(),
        msg.sync(),
      ],
      [msg.query("COMMIT")],
    ],
  },
];

/** The error code and ReadyForQuery status of each step. */
const summary = (replies: Reply[][]): string[] =>
  replies.map((r) => {
    const e = r.find((m) => m.type === "E");
    const code = e === undefined ? "-" : /\0C([^\0]*)/.exec(e.msg.toString("utf8", 5))?.[1];
    const z = r.at(-1);
    return `${code} ${z?.type === "Z" ? String.fromCharCode(z.msg[5]!) : typesOf(r)}`;
  });

describe("an error pgwarden answers itself in the middle of a batch (transaction mode)", () => {
  let fixture: Fixture;
  let target: PooledTarget;
  let admin: pg.Client;
  beforeAll(async () => {
    fixture = await createFixture("hlocalerr");
    admin = await superuserIn(fixture.database);
    await admin.query("CREATE TABLE local_err (tag text)");
    target = await startTarget(fixture, { pool: { mode: "transaction", size: 1 } });
  });
  afterAll(async () => {
    await target?.stop();
    await admin?.end();
  });
  beforeEach(async () => {
    await admin.query("TRUNCATE local_err");
  });

  const run = async (port: number, steps: Buffer[][]) => {
    const s = await PgSession.login({
      port,
      user: fixture.roles[0],
      database: fixture.database,
      password: fixture.password,
    });
    try {
      const out: Reply[][] = [];
      for (const step of steps) out.push(await s.exchange(step));
      return out;
    } finally {
      s.terminate();
    }
  };
  const rows = async (tag: string) =>
    Number((await admin.query("SELECT count(*)::int AS n FROM local_err WHERE tag = $1", [tag])).rows[0].n);

  for (const c of CASES)
    it(c.name, async () => {
      const direct = summary(await run(postgresInfo().port, c.batch("direct")));
      const through = summary(await run(target.port, c.batch("proxied")));
      // What PostgreSQL answered, and the row it rolled back, are what the client must get.
      expect({ answers: through, committed: await rows("proxied") }).toEqual({
        answers: direct,
        committed: await rows("direct"),
      });
    });
});
