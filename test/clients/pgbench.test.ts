import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { directClient, postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { type Run, runClient } from "../support/run.ts";

/** pgbench (PostgreSQL 15 client) through pgwarden, in its own database. */

const DB = `pgw_clients_bench_${process.pid}`;

let proxy: TestProxy;
let admin: pg.Client;

beforeAll(async () => {
  proxy = await startProxy({ log: { level: "info" } });
  admin = await directClient();
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${DB} OWNER pgw_app`);
});

afterAll(async () => {
  await proxy.close();
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin.end();
});

const pgbench = (args: string[]): Promise<Run> =>
  runClient("pgbench", ["-h", "127.0.0.1", "-p", String(proxy.port), "-U", "postgres", ...args, DB]);

/** A direct connection to the benchmark database, to check what pgbench left there. */
const benchQuery = async (text: string): Promise<Record<string, unknown>[]> => {
  const i = postgresInfo();
  const c = new pg.Client({ host: i.host, port: i.port, user: i.user, password: i.password, database: DB });
  await c.connect();
  try {
    return (await c.query(text)).rows;
  } finally {
    await c.end();
  }
};

/** The `key: value` lines of pgbench's report. */
const report = (stdout: string): Map<string, string> => {
  const out = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const m = /^([a-z][a-z ]*[a-z]): (.*)$/.exec(line);
    if (m !== null) out.set(m[1]!, m[2]!);
  }
  return out;
};

const waitNoSessions = async () => {
  const start = Date.now();
  while (proxy.server.sessions.size > 0) {
    if (Date.now() - start > 3000) throw new Error(`${proxy.server.sessions.size} sessions still open`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

const benchmark = async (mode: "simple" | "extended") => {
  const run = await pgbench(["-c", "4", "-j", "2", "-T", "5", "-M", mode]);
  expect(run.stderr).not.toMatch(/error|abort|FATAL/i);
  expect(run.code).toBe(0);
  const r = report(run.stdout);
  expect(r.get("query mode")).toBe(mode);
  expect(r.get("number of clients")).toBe("4");
  expect(r.get("number of threads")).toBe("2");
  expect(r.get("scaling factor")).toBe("1");
  expect(r.get("number of failed transactions")).toBe("0 (0.000%)");
  const processed = Number(r.get("number of transactions actually processed"));
  expect(processed).toBeGreaterThan(0);
  // pgbench empties pgbench_history before the run; each TPC-B transaction adds exactly one row.
  expect(await benchQuery("SELECT count(*)::int AS n FROM pgbench_history")).toEqual([{ n: processed }]);
  // The bank stays balanced: every delta went to one account, one teller and one branch.
  expect(
    await benchQuery(
      "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint = (SELECT sum(tbalance) FROM pgbench_tellers)::bigint" +
        " AND (SELECT sum(tbalance) FROM pgbench_tellers)::bigint = (SELECT sum(bbalance) FROM pgbench_branches)::bigint AS balanced",
    ),
  ).toEqual([{ balanced: true }]);
  expect(proxy.logs.filter((l) => l.level === 40 || l.level === 50)).toEqual([]);
  await waitNoSessions();
};

describe("pgbench through pgwarden", () => {
  it("initialises scale 1", async () => {
    const run = await pgbench(["-i", "-s", "1", "-q"]);
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(/^done in [\d.]+ s \(.*\)\.$/m);
    expect(run.stderr).not.toMatch(/error|FATAL/i);
    expect(
      await benchQuery(
        "SELECT (SELECT count(*) FROM pgbench_accounts)::int AS a, (SELECT count(*) FROM pgbench_tellers)::int AS t," +
          " (SELECT count(*) FROM pgbench_branches)::int AS b, (SELECT count(*) FROM pgbench_history)::int AS h",
      ),
    ).toEqual([{ a: 100_000, t: 10, b: 1, h: 0 }]);
    await waitNoSessions();
  }, 60_000);

  it(
    "runs 4 clients on 2 threads for 5 s in simple mode without failures",
    () => benchmark("simple"),
    60_000,
  );

  it(
    "runs 4 clients on 2 threads for 5 s in extended mode without failures",
    () => benchmark("extended"),
    60_000,
  );
});
