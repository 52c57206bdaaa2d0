import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postgresInfo } from "../support/postgres.ts";
import { runClient } from "../support/run.ts";
import {
  backends,
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  superuserIn,
  supports,
  targetMissing,
} from "./target.ts";

/** Real clients, 50 at once, through a transaction pool of two server connections: zero failures. */

const SIZE = 2;
const CLIENTS = 50;
const skip = targetMissing();
const prepared = supports("preparedStatements");

describe.skipIf(skip !== undefined)(`real clients through a pool of ${SIZE} (${skip ?? "running"})`, () => {
  let fixture: Fixture;
  let target: PooledTarget;
  let most = 0;
  let sampling = true;
  let sampler: Promise<void>;

  beforeAll(async () => {
    fixture = await createFixture("clients");
    const info = postgresInfo();
    // pgbench's tables, made directly and handed to the pool's role.
    const init = await runClient(
      "pgbench",
      ["-i", "-q", "-s", "1", "-h", info.host, "-p", String(info.port), "-U", info.user, fixture.database],
      { env: { PGPASSWORD: info.password } },
    );
    expect(init.code, init.stderr).toBe(0);
    const db = await superuserIn(fixture.database);
    await db.query(`GRANT ALL ON ALL TABLES IN SCHEMA public TO ${fixture.roles[0]}`);
    await db.end();
    target = await startTarget(fixture, { pool: { mode: "transaction", size: SIZE } });
    sampler = (async () => {
      while (sampling) {
        most = Math.max(most, (await backends(fixture)).filter((b) => b.usename === fixture.roles[0]).length);
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
  }, 120_000);

  afterAll(async () => {
    sampling = false;
    await sampler;
    await target?.stop();
    // Never more server connections than the pool's size, whatever the clients did.
    expect(most).toBeLessThanOrEqual(SIZE);
  });

  it(`node-postgres: ${CLIENTS} clients, parameterised${prepared ? " and named prepared" : ""} queries`, async () => {
    const clients = Array.from({ length: CLIENTS }, () => new pg.Client(target.connection()));
    await Promise.all(clients.map((c) => c.connect()));
    try {
      await Promise.all(
        clients.map(async (c, i) => {
          for (let j = 0; j < 20; j++) {
            const r = await c.query("SELECT $1::int * 2 AS n, $2::text AS t", [i * 100 + j, `c${i}`]);
            expect(r.rows).toEqual([{ n: (i * 100 + j) * 2, t: `c${i}` }]);
            if (prepared) {
              const named = await c.query({
                name: "pgw_named",
                text: "SELECT $1::int + 1 AS n",
                values: [j],
              });
              expect(named.rows).toEqual([{ n: j + 1 }]);
            }
            await c.query("BEGIN");
            const tx = await c.query("SELECT abalance FROM pgbench_accounts WHERE aid = $1", [
              1 + ((i * 20 + j) % 1000),
            ]);
            expect(tx.rows).toHaveLength(1);
            await c.query("COMMIT");
          }
        }),
      );
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });

  it(`postgres.js: ${CLIENTS} connections, prepare: ${prepared}, pipelined queries`, async () => {
    const sql = postgres({ ...target.connection(), max: CLIENTS, prepare: prepared, idle_timeout: 0 });
    try {
      const results = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => sql`SELECT ${i}::int AS i, ${`v${i}`}::text AS v`),
      );
      for (const [i, r] of results.entries()) expect(r).toEqual([{ i, v: `v${i}` }]);
      const txs = await Promise.all(
        Array.from({ length: 100 }, (_, i) =>
          sql.begin(async (t) => {
            const [a] = await t`SELECT count(*)::int AS n FROM pgbench_branches`;
            const [b] = await t`SELECT ${i}::int AS i`;
            return [a!.n, b!.i];
          }),
        ),
      );
      for (const [i, r] of txs.entries()) expect(r).toEqual([1, i]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  for (const mode of ["simple", "extended", ...(prepared ? ["prepared"] : [])]) {
    it(`pgbench -M ${mode}: ${CLIENTS} clients, zero failed transactions`, async () => {
      const c = target.connection();
      // pgbench 15 prepares with a blocking PQprepare: with several clients per thread, one client
      // waiting for a server connection there stalls the thread whose other clients hold them all.
      const threads = mode === "prepared" ? CLIENTS : 2;
      const run = await runClient(
        "pgbench",
        [
          "-n",
          "-M",
          mode,
          "-c",
          String(CLIENTS),
          "-j",
          String(threads),
          "-T",
          "5",
          "-h",
          c.host,
          "-p",
          String(c.port),
          "-U",
          c.user,
          c.database,
        ],
        { env: { PGPASSWORD: c.password }, timeoutMs: 90_000 },
      );
      expect(run.stderr).not.toMatch(/error|abort|FATAL/i);
      expect(run.code, `${run.stdout}\n${run.stderr}`.slice(-3000)).toBe(0);
      expect(run.stdout).toMatch(/^number of failed transactions: 0 \(0\.000%\)$/m);
      expect(
        Number(/^number of transactions actually processed: (\d+)/m.exec(run.stdout)?.[1]),
      ).toBeGreaterThan(CLIENTS);
    }, 120_000);
  }

  it("psql: a script of settings, transactions and \\gset", async () => {
    const c = target.connection();
    const dir = await mkdtemp(join(tmpdir(), "pgw-txpool-psql-"));
    const script = join(dir, "script.sql");
    await writeFile(
      script,
      [
        "SET application_name = 'psql-through-pool';",
        "BEGIN;",
        "SELECT count(*) FROM pgbench_branches;",
        "COMMIT;",
        "SELECT 'a' || 'b' AS x \\gset",
        "\\echo :x",
        "SELECT 1/0;",
        "SELECT 'after error';",
        "",
      ].join("\n"),
    );
    const run = await runClient(
      "psql",
      ["-X", "-At", "-h", c.host, "-p", String(c.port), "-U", c.user, "-d", c.database, "-f", script],
      { env: { PGPASSWORD: c.password } },
    );
    await rm(dir, { recursive: true, force: true });
    expect(run.stderr).toMatch(/ERROR: {2}division by zero/);
    expect(run.stdout.trim().split("\n")).toEqual(["SET", "BEGIN", "1", "COMMIT", "ab", "after error"]);
  });
});
