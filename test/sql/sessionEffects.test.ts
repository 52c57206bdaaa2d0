import { beforeAll, describe, expect, it } from "vitest";
import { loadSqlParser, type SqlParser } from "../../src/sql/parser.ts";
import {
  classifySessionEffects,
  mayHaveSessionEffects,
  pinReasons,
  type SessionEffect,
} from "../../src/sql/sessionEffects.ts";
import { directClient } from "../support/postgres.ts";

let parser: SqlParser;
beforeAll(async () => {
  parser = await loadSqlParser();
});

const effects = (sql: string): readonly (readonly SessionEffect[])[] => {
  const r = classifySessionEffects(parser, sql);
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
};
const flat = (sql: string): readonly SessionEffect[] => effects(sql).flat();

describe("classifySessionEffects", () => {
  it("reads SET values back as SQL text, with names lower-cased", () => {
    expect(flat(`set search_path to a, "B"`)).toEqual([
      { kind: "set", name: "search_path", value: "'a', 'B'" },
    ]);
    expect(flat(`SET "Work_Mem" = '64MB'`)).toEqual([{ kind: "set", name: "work_mem", value: "'64MB'" }]);
    expect(flat("SET SESSION statement_timeout TO 0")).toEqual([
      { kind: "set", name: "statement_timeout", value: "0" },
    ]);
    expect(flat("set x.y = -1.5")).toEqual([{ kind: "set", name: "x.y", value: "-1.5" }]);
    expect(flat("SET TIME ZONE 'Europe/Rome'")).toEqual([
      { kind: "set", name: "timezone", value: "'Europe/Rome'" },
    ]);
    expect(flat("SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE")).toEqual([
      { kind: "set", name: "timezone", value: "INTERVAL '-08:00' HOUR TO MINUTE" },
    ]);
    expect(flat("SET NAMES 'UTF8'")).toEqual([{ kind: "set", name: "client_encoding", value: "'UTF8'" }]);
    expect(flat("SET application_name = E'x\\\\y'")).toEqual([
      { kind: "set", name: "application_name", value: "E'x\\\\y'" },
    ]);
  });

  it("is not fooled by strings and comments that look like statements", () => {
    expect(
      effects("SELECT E'it\\'s; SET a = 1' /* ; SET b = 2 */; -- SET c = 3\nSELECT $x$; RESET ALL$x$"),
    ).toEqual([[], []]);
    expect(effects(`SELECT 1 AS "; LISTEN x"; SET "my.Setting" TO 'a;b'`)).toEqual([
      [],
      [{ kind: "set", name: "my.setting", value: "'a;b'" }],
    ]);
  });

  it("separates transaction-scoped and session-scoped settings", () => {
    expect(flat("SET LOCAL work_mem = '1MB'; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")).toEqual([]);
    expect(flat("SET transaction_read_only = on")).toEqual([]);
    expect(flat("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")).toEqual([
      { kind: "set", name: "default_transaction_isolation", value: "'repeatable read'" },
    ]);
    expect(flat("SELECT set_config('App.Tenant', '7', false), set_config('a.b', 'x', true)")).toEqual([
      { kind: "setRaw", name: "app.tenant", value: "7" },
    ]);
  });

  it("reports RESET, DEFAULT, RESET ALL, DISCARD and DEALLOCATE", () => {
    expect(flat("RESET work_mem; SET DateStyle TO DEFAULT; SET TIME ZONE LOCAL; RESET ALL")).toEqual([
      { kind: "reset", name: "work_mem" },
      { kind: "reset", name: "datestyle" },
      { kind: "reset", name: "timezone" },
      { kind: "resetAll" },
    ]);
    expect(flat("DISCARD ALL; DISCARD PLANS; DISCARD TEMP; DEALLOCATE ALL; DEALLOCATE PREPARE q")).toEqual([
      { kind: "discardAll" },
      { kind: "discard", what: "plans" },
      { kind: "discard", what: "temp" },
      { kind: "deallocate", all: true },
      { kind: "deallocate", all: false, name: "q" },
    ]);
  });

  it("flags what needs a pinned server connection", () => {
    const pins = (sql: string) => pinReasons(effects(sql));
    expect(pins("LISTEN jobs")).toEqual(["listen"]);
    expect(pins("SELECT pg_advisory_lock(1), pg_catalog.pg_try_advisory_lock_shared(2)")).toEqual([
      "advisory-lock",
    ]);
    expect(pins("SELECT pg_advisory_xact_lock(1); SELECT myschema.pg_advisory_lock(1)")).toEqual([]);
    expect(pins("WITH x AS (SELECT pg_advisory_lock(k) FROM t) SELECT * FROM x")).toEqual(["advisory-lock"]);
    for (const sql of [
      "CREATE TEMP TABLE t (a int)",
      "CREATE TEMPORARY SEQUENCE s",
      "create local temporary view v as select 1",
      "CREATE TABLE pg_temp.t (a int)",
      "SELECT 1 INTO TEMP t",
      "CREATE TEMP TABLE t AS SELECT 1",
      "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql RETURN 1",
    ]) {
      expect(pins(sql), sql).toEqual(["temp-table"]);
    }
    expect(pins("CREATE TABLE t (a int); CREATE VIEW v AS SELECT pg_advisory_lock(1)")).toEqual([]);
    expect(pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1")).toEqual(["with-hold-cursor"]);
    expect(pins("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1")).toEqual([]);
    expect(pins("PREPARE p AS SELECT 1; EXECUTE p")).toEqual(["sql-prepare"]);
    expect(pins("LOAD 'auto_explain'")).toEqual(["load"]);
    expect(pins("SET ROLE admin; SET SESSION AUTHORIZATION bob; RESET ROLE")).toEqual([
      "session-authorization",
    ]);
    expect(pins("SET LOCAL ROLE admin")).toEqual([]);
    expect(pins("SELECT set_config('a.b', $1, false)")).toEqual(["dynamic-set-config"]);
    expect(pins("SET standard_conforming_strings = off")).toEqual(["escape-string-syntax"]);
    expect(pins("SET standard_conforming_strings = on")).toEqual([]);
    expect(flat("UNLISTEN *; CLOSE ALL; SELECT pg_advisory_unlock_all()")).toEqual([
      { kind: "unpin", reason: "listen" },
      { kind: "unpin", reason: "with-hold-cursor" },
      { kind: "unpin", reason: "advisory-lock" },
    ]);
  });

  it("reports transaction control in statement order", () => {
    expect(
      effects("BEGIN; SAVEPOINT s1; ROLLBACK TO SAVEPOINT s1; RELEASE s1; COMMIT AND CHAIN; END"),
    ).toEqual([
      [{ kind: "txn", op: "begin" }],
      [{ kind: "txn", op: "savepoint", savepoint: "s1" }],
      [{ kind: "txn", op: "rollbackTo", savepoint: "s1" }],
      [{ kind: "txn", op: "release", savepoint: "s1" }],
      [{ kind: "txn", op: "commit", chain: true }],
      [{ kind: "txn", op: "commit" }],
    ]);
  });

  it("pre-filters only text that certainly has no effect", () => {
    expect(mayHaveSessionEffects("SELECT abalance FROM pgbench_accounts WHERE aid = $1")).toBe(false);
    expect(mayHaveSessionEffects("INSERT INTO t VALUES (1)")).toBe(false);
    const withEffects = [
      "set x = 1",
      "ReSeT all",
      "select pg_advisory_lock(1)",
      String.raw`select U&"pg_\0061dvisory_lock"(1)`,
      "create temporary table t()",
      "LISTEN a",
      "COMMIT",
      "select set_config('a','b',false)",
      "declare c cursor with hold for select 1",
      "load 'x'",
      "discard all",
      "deallocate all",
      "prepare p as select 1",
      "abort",
      "create table pg_temp.t()",
    ];
    for (const sql of withEffects) {
      expect(effects(sql).flat().length, sql).toBeGreaterThan(0);
      expect(mayHaveSessionEffects(sql), sql).toBe(true);
    }
  });

  it("returns a parse failure instead of guessing", () => {
    expect(classifySessionEffects(parser, "SET = 1")).toMatchObject({
      ok: false,
      error: { code: "SQL_SYNTAX" },
    });
  });

  it("produces SET text that PostgreSQL accepts and that sets the same value", async () => {
    const pg = await directClient();
    try {
      for (const sql of [
        `set search_path to a, "B", 'c d'`,
        "SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE",
        "SET TIME ZONE -7",
        "SET application_name = E'x\\\\y''z'",
        "SET extra_float_digits = -3",
        "SET random_page_cost = 1.25",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET xmloption = document",
        "SET datestyle = sql, dmy",
      ]) {
        const [e] = flat(sql);
        if (e?.kind !== "set") throw new Error(`no set from ${sql}`);
        await pg.query(sql);
        const want = (await pg.query<{ v: string }>("SELECT current_setting($1) AS v", [e.name])).rows[0]!.v;
        await pg.query(`RESET ${e.name === "timezone" ? "TIME ZONE" : e.name}`);
        const replay = e.name === "timezone" ? `SET TIME ZONE ${e.value}` : `SET ${e.name} TO ${e.value}`;
        await pg.query(replay);
        const got = (await pg.query<{ v: string }>("SELECT current_setting($1) AS v", [e.name])).rows[0]!.v;
        expect(got, sql).toBe(want);
        await pg.query("RESET ALL");
      }
    } finally {
      await pg.end();
    }
  });
});
