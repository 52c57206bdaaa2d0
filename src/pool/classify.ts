import type { SqlParser } from "../sql/parser.ts";
import {
  classifySessionEffects,
  type PinReason,
  pinReasons,
  type StatementEffects,
} from "../sql/sessionEffects.ts";

/**
 * Session effects of a query in pooled modes, parsed only when a word that can change session
 * state appears: pgbench's SELECT never reaches the parser, a SET always does. A word inside a
 * literal only costs a parse; a statement that changes state always has one of these words.
 * Function names (pg_advisory_lock, set_config) are matched inside identifiers too.
 */
const MAYBE_STATEFUL =
  /\b(?:set|reset|discard|deallocate|listen|unlisten|prepare|temp|temporary|hold|load|declare|close|begin|commit|rollback|abort|end|start|savepoint|release|session|role)\b|pg_temp|advisory|set_config/i;

export const NO_EFFECTS: StatementEffects = [];

export const sessionEffectsOf = (parser: SqlParser | undefined, sql: string): StatementEffects => {
  if (parser === undefined || !MAYBE_STATEFUL.test(sql)) return NO_EFFECTS;
  const out = classifySessionEffects(parser, sql);
  // A query PostgreSQL's own grammar rejects fails there too and changes nothing.
  return out.ok ? out.value : NO_EFFECTS;
};

const FEATURE: Record<PinReason, string> = {
  listen: "LISTEN",
  "advisory-lock": "session-level advisory locks",
  "temp-table": "temporary tables",
  "with-hold-cursor": "WITH HOLD cursors",
  "sql-prepare": "SQL PREPARE",
  load: "LOAD",
  "session-authorization": "SET ROLE and SET SESSION AUTHORIZATION",
  "dynamic-set-config": "set_config with a non-constant name or value",
  "escape-string-syntax": "standard_conforming_strings off",
};

/** The refusal a pinning statement gets with `pool.pinning.onSessionState: refuse`, or undefined. */
export const refusedFeature = (effects: StatementEffects): string | undefined => {
  const reasons = pinReasons(effects);
  if (reasons.length === 0) return undefined;
  return `${reasons.map((r) => FEATURE[r]).join(", ")} cannot be used in transaction pooling mode (pool.pinning.onSessionState is refuse)`;
};

/** A query that fails on the server with 0A000 and `message`: the transaction fails as it would have. */
export const refusalQuery = (message: string): string => {
  const text = message.replaceAll("'", "''");
  return `DO $pgwarden$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '${text}'; END $pgwarden$`;
};
