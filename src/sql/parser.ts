import { hash } from "node:crypto";
import * as pgQuery from "libpg-query";

/**
 * The real PostgreSQL 18 grammar (libpg_query compiled to WASM), behind a boundary that never
 * throws: every call returns either its value or a typed failure.
 */

export type SqlParseErrorCode =
  /** The grammar rejected the text; PostgreSQL would reject it too. */
  | "SQL_SYNTAX"
  /** The text cannot be handed to the parser at all (empty, or holds a NUL byte). */
  | "SQL_INPUT"
  /** The parser itself failed (out of WASM memory, unexpected output). */
  | "SQL_PARSER_INTERNAL";

export interface SqlParseError {
  readonly _tag: "SqlParseError";
  readonly code: SqlParseErrorCode;
  /** The parser's message with the quoted input token removed (it could be a secret literal). */
  readonly message: string;
  /** 0-based character offset of the error in the input, when the parser gives one. */
  readonly position?: number;
}

export type ParseOutcome<A> =
  | { readonly ok: true; readonly value: A }
  | { readonly ok: false; readonly error: SqlParseError };

/** One raw statement of the parse tree: the node keyed by its type name (`{ VariableSetStmt: … }`). */
import type { RawNode } from "./nodes.ts";

export { nodeOf, type RawNode } from "./nodes.ts";

export interface RawStatement {
  readonly stmt: RawNode;
  /** Byte offset and length of the statement in the UTF-8 input (length 0: to the end). */
  readonly location: number;
  readonly length: number;
}

export interface ParserVersion {
  /** PG_VERSION_NUM of the grammar the parser was built from, e.g. 180004. */
  readonly num: number;
  /** The same as PostgreSQL prints it, e.g. "18.4". */
  readonly text: string;
}

export interface SqlParser {
  readonly parserVersion: ParserVersion;
  parse(sql: string): ParseOutcome<readonly RawStatement[]>;
  /** Constants replaced by $1, $2… as pg_stat_statements shows queries. */
  normalize(sql: string): ParseOutcome<string>;
  /** libpg_query's fingerprint: equal for statements that differ only in constants/whitespace. */
  fingerprint(sql: string): ParseOutcome<string>;
}

const fail = (
  code: SqlParseErrorCode,
  message: string,
  position?: number,
): { ok: false; error: SqlParseError } => ({
  ok: false,
  error:
    position === undefined
      ? { _tag: "SqlParseError", code, message }
      : { _tag: "SqlParseError", code, message, position },
});

// The WASM side reads C strings: a NUL would silently truncate the statement it sees.
const badInput = (sql: string): { ok: false; error: SqlParseError } | undefined => {
  if (typeof sql !== "string") return fail("SQL_INPUT", "query text must be a string");
  if (sql.includes("\0")) return fail("SQL_INPUT", "query text contains a NUL byte");
  return undefined;
};

class EmptyInput extends Error {
  constructor() {
    super("query text is empty");
  }
}

const withoutInputToken = (message: string): string => message.replace(/ at or near ".*$/s, "");

const fromThrown = (e: unknown): { ok: false; error: SqlParseError } => {
  const message = withoutInputToken(e instanceof Error ? e.message : String(e));
  if (e instanceof pgQuery.SqlError) {
    return fail("SQL_SYNTAX", message, e.sqlDetails?.cursorPosition);
  }
  if (e instanceof EmptyInput) return fail("SQL_INPUT", message);
  return fail("SQL_PARSER_INTERNAL", message);
};

const guarded = <A>(sql: string, f: (sql: string) => A): ParseOutcome<A> => {
  const bad = badInput(sql);
  if (bad !== undefined) return bad;
  try {
    return { ok: true, value: f(sql) };
  } catch (e) {
    return fromThrown(e);
  }
};

interface ScanToken {
  readonly start: number;
  readonly end: number;
  readonly tokenType: number;
}

/**
 * The token types of every kind of constant (numbers; '…', E'…', $$…$$, U&'…', B'…', X'…'
 * strings), read from the scanner itself at load rather than written down, so that another
 * grammar's numbering cannot turn a constant into a kept token unnoticed.
 */
const constantTokenTypes = (): ReadonlySet<number> => {
  const probe = "SELECT 1, 1.5, 'a', U&'b', B'1', X'f'";
  const { tokens } = pgQuery.scanSync(probe) as unknown as { tokens: ScanToken[] };
  const types = new Set(tokens.filter((_, i) => i > 0 && i % 2 === 1).map((t) => t.tokenType));
  if (types.size !== 6) throw new Error("the SQL scanner does not tell constants apart");
  return types;
};

/**
 * What normalize leaves, made safe: pg_stat_statements' normalization replaces only the
 * constants a plan depends on, so literals in DDL and utility statements (COMMENT … IS '…', a
 * column DEFAULT, a view's body, ALTER SYSTEM, COPY's file name) and comments pass through.
 * Every remaining constant becomes the next `$n` and every comment goes; the rest is kept as is.
 * Offsets from the scanner are UTF-8 byte offsets.
 */
const scrubConstants = (normalized: string, constants: ReadonlySet<number>): string => {
  const { tokens } = pgQuery.scanSync(normalized) as unknown as { tokens: ScanToken[] };
  const bytes = Buffer.from(normalized, "utf8");
  let next = 0;
  for (const m of normalized.matchAll(/\$(\d+)/g)) next = Math.max(next, Number(m[1]));
  let out = "";
  let at = 0;
  for (const t of tokens) {
    const gap = bytes.toString("utf8", at, t.start);
    // Only whitespace between tokens is kept: anything else there is a comment.
    out += /^\s*$/.test(gap) ? gap : " ";
    out += constants.has(t.tokenType) ? `$${++next}` : bytes.toString("utf8", t.start, t.end);
    at = t.end;
  }
  return out;
};

const versionText = (num: number): string => `${Math.floor(num / 10000)}.${num % 10000}`;

interface ParseTree {
  readonly version: number;
  readonly stmts?: readonly { stmt: RawNode; stmt_location?: number; stmt_len?: number }[];
}

const parseStatements = (sql: string): readonly RawStatement[] => {
  // An empty or comment-only string is a valid, empty query (PostgreSQL answers EmptyQueryResponse).
  if (sql.trim() === "") return [];
  const tree = pgQuery.parseSync(sql) as unknown as ParseTree;
  return (tree.stmts ?? []).map((s) => ({
    stmt: s.stmt,
    location: s.stmt_location ?? 0,
    length: s.stmt_len ?? 0,
  }));
};

const FINGERPRINT = /^[0-9a-f]{16}$/;

// The library's normalize/fingerprint hand most grammar errors back as if they were results, so
// the text is parsed first: its error is the one returned, and a success is known to be real.
const validated =
  <A>(f: (sql: string) => A, check: (a: A) => boolean) =>
  (sql: string): A => {
    if (sql.trim() === "") throw new EmptyInput();
    pgQuery.parseSync(sql);
    const a = f(sql);
    if (!check(a)) throw new Error("parser returned an unexpected result");
    return a;
  };

/**
 * `f` remembered by exact text, least recently used first out. Applications send the same
 * statements again and again (prepared or parameterised, an unnamed Parse per execution), and a
 * normalization costs tens of microseconds of WASM where a hit costs a hash and a map lookup. The
 * cache is keyed by the text's SHA-256, not the text: statements keep their literals (passwords
 * in ALTER ROLE, say), which `normalized` exists to keep out of the audit trail, and so out of a
 * long-lived cache too. Answers `keep` refuses (a transient failure) are not remembered, nor
 * those for texts over `maxChars`, so the cache holds about maxEntries × maxChars characters.
 */
export const memoizeByText = <A>(
  f: (sql: string) => A,
  keep: (a: A) => boolean = () => true,
  maxEntries = 1024,
  maxChars = 4096,
): ((sql: string) => A) => {
  const cache = new Map<string, A>();
  return (sql) => {
    if (sql.length > maxChars) return f(sql);
    const key = hash("sha256", sql, "base64");
    const hit = cache.get(key);
    if (hit !== undefined) {
      cache.delete(key);
      cache.set(key, hit);
      return hit;
    }
    const a = f(sql);
    if (!keep(a)) return a;
    cache.set(key, a);
    if (cache.size > maxEntries) cache.delete(cache.keys().next().value!);
    return a;
  };
};

/** A parser failure that says nothing about the text (the WASM module's own trouble) may pass. */
const lasting = (o: ParseOutcome<unknown>): boolean => o.ok || o.error.code !== "SQL_PARSER_INTERNAL";

let loaded: Promise<SqlParser> | undefined;

/** Initialises the WASM module once; every later call returns the same parser. */
export const loadSqlParser = (): Promise<SqlParser> => {
  loaded ??= pgQuery.loadModule().then(() => {
    const probe = pgQuery.parseSync("SELECT 1") as unknown as ParseTree;
    const constants = constantTokenTypes();
    const normalizeSafely = (sql: string): string => scrubConstants(pgQuery.normalizeSync(sql), constants);
    const parser: SqlParser = {
      parserVersion: { num: probe.version, text: versionText(probe.version) },
      parse: (sql) => guarded(sql, parseStatements),
      normalize: memoizeByText(
        (sql) =>
          guarded(
            sql,
            validated(normalizeSafely, (s) => typeof s === "string"),
          ),
        lasting,
      ),
      fingerprint: memoizeByText(
        (sql) =>
          guarded(
            sql,
            validated(pgQuery.fingerprintSync, (s) => FINGERPRINT.test(s)),
          ),
        lasting,
      ),
    };
    return parser;
  });
  return loaded;
};
