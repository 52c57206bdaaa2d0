import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { msg } from "../support/pgSession.ts";
import { auditedProxy, closeAndRead, type Rec, viaProxy } from "./support.ts";

/**
 * audit.statements normalized / fingerprint / none promise that literal values never reach the
 * log (docs/audit.md: "every literal replaced by $n ..., so values never reach the log"). Each
 * statement below carries a distinct secret; it goes through the proxy as a simple Query and as a
 * Parse, and the raw segment files (every byte, not just the parsed `text`) must not contain it.
 * Whether PostgreSQL accepts the statement does not matter: the request is recorded either way.
 */

/** Literals libpg-query's normalize replaces. */
const NORMALIZED_BY_PARSER = [
  "ALTER ROLE auditdiff_no_such_role PASSWORD 'pw-alter-role-7f3a'",
  "CREATE ROLE auditdiff_no_such_role2 LOGIN PASSWORD 'pw-create-role-7f3a'",
  "SELECT 'lit-select-7f3a' AS v, 42424242 AS n",
  "SET application_name = 'lit-set-7f3a'",
  "DO $$BEGIN PERFORM 'lit-do-body-7f3a'; END$$",
  "SELECT 'lit-syntax-error-7f3a' FROM WHERE",
  // Longer than the normalization cache keeps (4,096 characters).
  `SELECT 'lit-long-7f3a', '${"x".repeat(20_000)}'`,
];

/** Utility statements whose string literals PostgreSQL's grammar keeps as plain strings. */
const UTILITY_LITERALS = [
  "COMMENT ON TABLE pg_class IS 'lit-comment-7f3a'",
  "CREATE TEMP TABLE auditdiff_def (a text DEFAULT 'lit-default-7f3a')",
  "CREATE TEMP VIEW auditdiff_v AS SELECT 'lit-view-7f3a' AS v",
  "ALTER SYSTEM SET work_mem = 'lit-alter-system-7f3a'",
  "COPY pg_class TO '/tmp/lit-copy-file-7f3a'",
];

const secretsIn = (sqls: readonly string[]): string[] => sqls.map((s) => /([a-z-]+-7f3a)/.exec(s)![1]!);

/** Runs the statements through a fresh proxy in `mode` and returns the raw segment text and the records. */
const record = async (mode: string, sqls: readonly string[]): Promise<{ raw: string; records: Rec[] }> => {
  const proxy = await auditedProxy({ statements: mode });
  try {
    const s = await viaProxy(proxy);
    try {
      for (const sql of sqls) {
        await s.query(sql, 5000);
        await s.exchange([msg.parse("", sql), msg.sync()], 1, 5000);
      }
    } finally {
      s.terminate();
    }
  } finally {
    await proxy.close();
  }
  let raw = "";
  for (const f of await readdir(proxy.dir)) raw += await readFile(join(proxy.dir, f), "utf8");
  return { raw, records: await closeAndRead(proxy) };
};

const leaked = (raw: string, sqls: readonly string[]) => secretsIn(sqls).filter((x) => raw.includes(x));

describe("statement text modes keep literals out of the segment files", () => {
  it("full mode keeps them (the probe itself sees the secrets)", async () => {
    const { raw } = await record("full", [NORMALIZED_BY_PARSER[0]!, UTILITY_LITERALS[0]!]);
    expect(leaked(raw, [NORMALIZED_BY_PARSER[0]!, UTILITY_LITERALS[0]!]).length).toBe(2);
  }, 10_000);

  for (const mode of ["normalized", "fingerprint", "none"] as const)
    it(`${mode}: passwords, SELECT/SET/DO literals and a rejected text never appear`, async () => {
      const { raw, records } = await record(mode, NORMALIZED_BY_PARSER);
      expect(leaked(raw, NORMALIZED_BY_PARSER)).toEqual([]);
      const st = records.filter((r) => r.kind === "statement");
      expect(st.length).toBe(NORMALIZED_BY_PARSER.length * 2);
      if (mode === "normalized")
        expect(st.find((r) => String(r.text ?? "").startsWith("ALTER ROLE"))?.text).toBe(
          "ALTER ROLE auditdiff_no_such_role PASSWORD $1",
        );
      if (mode === "fingerprint") expect(st.every((r) => r.text === undefined)).toBe(true);
      if (mode === "none")
        expect(st.every((r) => r.text === undefined && r.fingerprint === undefined)).toBe(true);
    }, 10_000);

  for (const mode of ["fingerprint", "none"] as const)
    it(`${mode}: utility-statement literals never appear`, async () => {
      const { raw } = await record(mode, UTILITY_LITERALS);
      expect(leaked(raw, UTILITY_LITERALS)).toEqual([]);
    }, 10_000);

  // libpg-query's normalize only replaces A_Const nodes outside DDL bodies: COMMENT ... IS,
  // column DEFAULTs, view bodies, ALTER SYSTEM values and COPY file names stay verbatim.
  it("normalized: literals in COMMENT, DEFAULT, CREATE VIEW, ALTER SYSTEM and COPY 'file' never appear", async () => {
    const { raw } = await record("normalized", UTILITY_LITERALS);
    expect(leaked(raw, UTILITY_LITERALS)).toEqual([]);
  }, 10_000);
});
