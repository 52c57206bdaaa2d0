import { fc, test } from "@fast-check/vitest";
import { beforeAll, describe, expect, it } from "vitest";
import { loadSqlParser, memoizeByText, type SqlParser } from "../../src/sql/parser.ts";
import { directClient } from "../support/postgres.ts";

let parser: SqlParser;
beforeAll(async () => {
  parser = await loadSqlParser();
});

describe("SQL parser adapter", () => {
  it("loads once and reports the PostgreSQL 18 grammar", async () => {
    expect(await loadSqlParser()).toBe(parser);
    expect(parser.parserVersion.num).toBeGreaterThanOrEqual(180000);
    expect(parser.parserVersion.num).toBeLessThan(190000);
    expect(parser.parserVersion.text).toMatch(/^18\.\d+$/);
  });

  it("parses several statements with their UTF-8 byte positions", () => {
    const r = parser.parse("SELECT 'é'; SET x = 1");
    expect(r.ok && r.value.map((s) => [Object.keys(s.stmt)[0], s.location])).toEqual([
      ["SelectStmt", 0],
      ["VariableSetStmt", Buffer.byteLength("SELECT 'é'; ")],
    ]);
    expect(parser.parse("  -- only a comment")).toEqual({ ok: true, value: [] });
  });

  it("normalizes constants to $n as pg_stat_statements does, and fingerprints ignore them", () => {
    expect(parser.normalize("SELECT * FROM t WHERE a = 1 AND b = 'x'")).toEqual({
      ok: true,
      value: "SELECT * FROM t WHERE a = $1 AND b = $2",
    });
    const f1 = parser.fingerprint("select * from t where a = 1");
    const f2 = parser.fingerprint("SELECT *\n FROM t WHERE a = 42");
    const f3 = parser.fingerprint("select * from u where a = 1");
    expect(f1.ok && f1.value).toMatch(/^[0-9a-f]{16}$/);
    expect(f2).toEqual(f1);
    expect(f3).not.toEqual(f1);
  });

  it("returns failures as values, without the offending token", () => {
    for (const f of [parser.parse, parser.normalize, parser.fingerprint]) {
      const r = f("SELECT 'secret-password");
      expect(r).toMatchObject({
        ok: false,
        error: { code: "SQL_SYNTAX", message: "unterminated quoted string" },
      });
      expect(JSON.stringify(r)).not.toContain("secret");
      expect(f("SELECT 1\0; DROP TABLE t")).toMatchObject({ ok: false, error: { code: "SQL_INPUT" } });
    }
    expect(parser.normalize("")).toMatchObject({ ok: false, error: { code: "SQL_INPUT" } });
    // Deep nesting exhausts the grammar's stack as it does in PostgreSQL, and the parser still works after.
    const deep = `SELECT ${"(".repeat(20000)}1${")".repeat(20000)}`;
    expect(parser.parse(deep)).toMatchObject({ ok: false, error: { code: "SQL_SYNTAX" } });
    expect(parser.parse("SELECT 1").ok).toBe(true);
  });

  test.prop([fc.string({ maxLength: 200 })], { numRuns: 300 })("never throws on arbitrary text", (s) => {
    for (const f of [parser.parse, parser.normalize, parser.fingerprint]) {
      const r = f(s);
      expect(typeof r.ok).toBe("boolean");
    }
  });

  it("agrees with PostgreSQL on what is a syntax error", async () => {
    const pg = await directClient();
    try {
      const samples = [
        "SELECT 1",
        "SELEC 1",
        'SET search_path TO a, "B"',
        "SELECT $$unterminated",
        "CREATE TABLE (a int)",
        "SELECT 1; SELECT 2",
        "SET TIME ZONE INTERVAL '1' DAY",
        "select json_table('{}', '$' columns (a int path '$.a'))",
      ];
      for (const sql of samples) {
        const ours = parser.parse(sql).ok;
        // 42601 is syntax_error; any other outcome (success, missing table) means the grammar accepted it.
        const theirs = await pg.query(sql).then(
          () => true,
          (e: { code?: string }) => e.code !== "42601",
        );
        expect(ours, sql).toBe(theirs);
      }
    } finally {
      await pg.end();
    }
  });
});

describe("memoizeByText", () => {
  it("computes each text once, keeps the most recently used, and does not keep what `keep` refuses", () => {
    const calls: string[] = [];
    const f = memoizeByText(
      (s: string) => {
        calls.push(s);
        return { n: s.length, transient: s.startsWith("!") };
      },
      (a) => !a.transient,
      2,
    );
    expect(f("a")).toBe(f("a"));
    f("bb");
    f("a"); // a is now the most recent: bb goes first
    f("ccc");
    f("a");
    f("bb");
    f("!flaky");
    f("!flaky");
    expect(calls).toEqual(["a", "bb", "ccc", "bb", "!flaky", "!flaky"]);
  });

  it("leaves the parser's answers as they were, hit or miss", () => {
    for (const sql of [
      "SELECT 1 WHERE a = 'x'",
      "SELEC nonsense",
      "SELECT 1 WHERE a = 'x'",
      "SELEC nonsense",
    ]) {
      expect(parser.normalize(sql)).toEqual(
        sql.startsWith("SELEC ")
          ? { ok: false, error: expect.anything() }
          : { ok: true, value: "SELECT $1 WHERE a = $2" },
      );
    }
  });
});
