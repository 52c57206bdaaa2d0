import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { type Run, runClient } from "../support/run.ts";

/** The psql binary (PostgreSQL 15 client) through pgwarden, scripts in files, outputs compared exactly. */

const TABLE = "pgw_clients_psql_t";
const BAD = "pgw_clients_psql_bad";

let proxy: TestProxy;
let admin: pg.Client;
let dir: string;

beforeAll(async () => {
  proxy = await startProxy();
  admin = await directClient();
  await admin.query(`DROP TABLE IF EXISTS ${TABLE}, ${BAD}`);
  await admin.query(`CREATE TABLE ${BAD} (id int PRIMARY KEY, name text NOT NULL)`);
  dir = await mkdtemp(join(tmpdir(), "pgw-psql-"));
});

afterAll(async () => {
  await admin.query(`DROP TABLE IF EXISTS ${TABLE}, ${BAD}`);
  await admin.end();
  await proxy.close();
  await rm(dir, { recursive: true, force: true });
});

/** Runs psql against the proxy with `script` in the file `file` (`-f`), so errors name its lines. */
const psql = async (file: string, script: string, extra: string[] = []): Promise<Run> => {
  await writeFile(join(dir, file), script);
  return runClient(
    "psql",
    [
      "-X",
      "-v",
      "ON_ERROR_STOP=1",
      "-h",
      "127.0.0.1",
      "-p",
      String(proxy.port),
      "-U",
      "postgres",
      "-d",
      "postgres",
      "-f",
      file,
      ...extra,
    ],
    { cwd: dir, timeoutMs: 20_000 },
  );
};

const waitNoSessions = async () => {
  const start = Date.now();
  while (proxy.server.sessions.size > 0) {
    if (Date.now() - start > 2000) throw new Error(`${proxy.server.sessions.size} sessions still open`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe("psql through pgwarden", () => {
  it("runs a script with DDL, DML, queries and \\copy in both directions", async () => {
    const rows = Array.from({ length: 1000 }, (_, k) => `${k + 3}\tname ${k + 3} ✓`);
    await writeFile(join(dir, "in.tsv"), `${rows.join("\n")}\n`);
    const script = [
      `CREATE TABLE ${TABLE} (id int PRIMARY KEY, name text NOT NULL);`,
      `INSERT INTO ${TABLE} VALUES (1, 'one'), (2, 'two');`,
      `SELECT id, name FROM ${TABLE} ORDER BY id;`,
      `\\copy ${TABLE} FROM 'in.tsv'`,
      `SELECT count(*), sum(id), max(name) FROM ${TABLE};`,
      `\\copy (SELECT id, name FROM ${TABLE} WHERE id <= 5 ORDER BY id) TO 'out.tsv'`,
      "BEGIN;",
      `UPDATE ${TABLE} SET name = upper(name) WHERE id <= 2;`,
      "COMMIT;",
      `SELECT string_agg(name, ',' ORDER BY id) FROM ${TABLE} WHERE id <= 3;`,
      "SELECT 'a' AS x, NULL AS y \\gset",
      "\\echo :x",
      "",
    ].join("\n");
    const run = await psql("copy.sql", script, ["-At"]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(run.stdout).toBe(
      [
        "CREATE TABLE",
        "INSERT 0 2",
        "1|one",
        "2|two",
        "COPY 1000",
        "1002|502503|two",
        "COPY 5",
        "BEGIN",
        "UPDATE 2",
        "COMMIT",
        "ONE,TWO,name 3 ✓",
        "a",
        "",
      ].join("\n"),
    );
    expect(await readFile(join(dir, "out.tsv"), "utf8")).toBe(
      "1\tone\n2\ttwo\n3\tname 3 ✓\n4\tname 4 ✓\n5\tname 5 ✓\n",
    );
    const direct = await admin.query(`SELECT count(*)::int AS n, sum(id)::int AS s FROM ${TABLE}`);
    expect(direct.rows).toEqual([{ n: 1002, s: 502503 }]);
    await waitNoSessions();
  });

  it("stops at the first error with ON_ERROR_STOP and exits with code 3", async () => {
    const script = ["SELECT 1;", "SELECT * FROM pgw_no_such_table;", "SELECT 2;", ""].join("\n");
    const run = await psql("stop.sql", script, ["-At"]);
    expect(run.code).toBe(3);
    expect(run.stdout).toBe("1\n");
    expect(run.stderr).toBe(
      [
        'psql:stop.sql:2: ERROR:  relation "pgw_no_such_table" does not exist',
        "LINE 1: SELECT * FROM pgw_no_such_table;",
        "                      ^",
        "",
      ].join("\n"),
    );
    await waitNoSessions();
  });

  it("falls back to plaintext when SSL is preferred, and refuses when SSL is required", async () => {
    const preferred = await psql("ssl.sql", "SELECT 'plain';\n", [
      "-At",
      "-d",
      "dbname=postgres sslmode=prefer",
    ]);
    expect(preferred).toEqual({ code: 0, stdout: "plain\n", stderr: "" });
    const required = await psql("ssl.sql", "SELECT 'never';\n", [
      "-At",
      "-d",
      "dbname=postgres sslmode=require",
    ]);
    expect(required.code).toBe(2);
    expect(required.stdout).toBe("");
    expect(required.stderr).toBe(
      `psql: error: connection to server at "127.0.0.1", port ${proxy.port} failed: server does not support SSL, but SSL was required\n`,
    );
    await waitNoSessions();
  });

  it("reports a failing \\copy with its line and stops", async () => {
    await writeFile(join(dir, "bad.tsv"), "5000\tfine\nnope\tbad\n");
    const script = [`\\copy ${BAD} FROM 'bad.tsv'`, `SELECT count(*) FROM ${BAD} WHERE id = 5000;`, ""].join(
      "\n",
    );
    const run = await psql("badcopy.sql", script, ["-At"]);
    expect(run.code).toBe(3);
    expect(run.stdout).toBe("");
    expect(run.stderr).toBe(
      [
        'psql:badcopy.sql:1: ERROR:  invalid input syntax for type integer: "nope"',
        `CONTEXT:  COPY ${BAD}, line 2, column id: "nope"`,
        "",
      ].join("\n"),
    );
    // Nothing of the failed COPY was kept, and the same table still answers a new psql.
    const after = await psql("after.sql", `SELECT count(*) FROM ${BAD} WHERE id = 5000;\n`, ["-At"]);
    expect(after).toEqual({ code: 0, stdout: "0\n", stderr: "" });
    await waitNoSessions();
  });
});
