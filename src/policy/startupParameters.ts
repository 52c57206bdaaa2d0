import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";

/**
 * The startup boundary: which of a client's startup parameters reach PostgreSQL. A startup
 * parameter is a GUC set before any statement runs, with the upstream role's privileges, so an
 * unfiltered one can switch off triggers (session_replication_role), silence server logging
 * (log_statement) or open a replication connection. Only an allowlist passes.
 */

export interface StartupPolicy {
  /** Allowed GUC names; compared case-insensitively, as PostgreSQL compares GUC names. */
  readonly parameters: readonly string[];
  /** The `options` parameter: refused outright, or reduced to allowlisted `-c` settings. */
  readonly options: "refuse" | "filter";
}

export interface FilteredStartup {
  /** What goes upstream, besides user and database. */
  readonly parameters: ReadonlyMap<string, string>;
  /** Names dropped because they are not allowlisted (for the log; values are not kept). */
  readonly dropped: readonly string[];
}

const refused = (message: string): PgwardenError =>
  pgwardenError("PGW_ACCESS_DENIED", SqlState.invalidAuthorization, message);

const NOT_REPLICATION = new Set(["false", "off", "no", "0"]);

/** Parameters that are the connection's identity and routing, not settings. */
const ROUTING = new Set(["user", "database"]);

/**
 * Splits an `options` value the way PostgreSQL's pg_split_opts does: whitespace separates
 * words, a backslash escapes the next character.
 */
export const splitOptions = (value: string): string[] => {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === "\\" && i + 1 < value.length) {
      word += value[++i];
      inWord = true;
    } else if (ch === " " || ch === "\t" || ch === "\n" || ch === "\r") {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else {
      word += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
};

/** `-c name=value`, `-cname=value` and `--name=value` settings of an options string. */
const optionSettings = (value: string): [string, string][] | PgwardenError => {
  const words = splitOptions(value);
  const out: [string, string][] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    let setting: string | undefined;
    if (w === "-c") setting = words[++i];
    else if (w.startsWith("-c")) setting = w.slice(2);
    else if (w.startsWith("--")) setting = w.slice(2);
    const eq = setting?.indexOf("=") ?? -1;
    if (setting === undefined || eq <= 0)
      return refused(`unsupported option "${w}" in the options parameter`);
    // PostgreSQL reads dashes in option names as underscores.
    out.push([setting.slice(0, eq).replaceAll("-", "_"), setting.slice(eq + 1)]);
  }
  return out;
};

/** Applies the startup boundary to a client's startup parameters. */
export const filterStartupParameters = (
  policy: StartupPolicy,
  params: ReadonlyMap<string, string>,
): FilteredStartup | PgwardenError => {
  const allowed = new Set(policy.parameters.map((p) => p.toLowerCase()));
  const out = new Map<string, string>();
  const dropped: string[] = [];
  for (const [name, value] of params) {
    const lower = name.toLowerCase();
    if (ROUTING.has(name) || name.startsWith("_pq_.")) continue;
    if (lower === "replication") {
      // "false" asks for a normal connection; anything else PostgreSQL would make a walsender.
      if (NOT_REPLICATION.has(value.toLowerCase())) continue;
      return refused("replication connections are not allowed through pgwarden");
    }
    if (lower === "options") {
      if (policy.options === "refuse") return refused("the options startup parameter is not allowed");
      const settings = optionSettings(value);
      if (!Array.isArray(settings)) return settings;
      for (const [n, v] of settings) {
        if (allowed.has(n.toLowerCase())) out.set(n, v);
        else dropped.push(n);
      }
      continue;
    }
    if (allowed.has(lower)) out.set(name, value);
    else dropped.push(name);
  }
  return { parameters: out, dropped };
};
