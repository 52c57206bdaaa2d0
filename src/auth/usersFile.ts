/**
 * The users file: one `"name" "SCRAM-SHA-256$…"` entry per line, in the spirit of PgBouncer's
 * userlist.txt. `""` inside quotes stands for one `"`. Blank lines and lines starting with `#`
 * (after optional spaces) are kept as they are. Only SCRAM-SHA-256 verifiers are accepted.
 *
 * Pure text in, text out; reading and writing the file is in usersFileStore.ts.
 */
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { formatScramVerifier, parseScramVerifier, type ScramVerifier } from "./scramVerifier.ts";

type Line =
  | { readonly kind: "other" }
  | { readonly kind: "entry"; readonly name: string; readonly secret: string }
  | { readonly kind: "error"; readonly message: string };

const fileError = (line: number, message: string): PgwardenError =>
  pgwardenError("PGW_USERS_FILE", SqlState.internalError, `users file line ${line}: ${message}`);

const CONTROL = /[\x00-\x1F\x7F]/;
const BLANK = /^[ \t]*$/;
const MD5_HASH = /^md5[0-9a-f]{32}$/i;

/** A problem with a user name, or undefined when it can be stored. */
export const checkUserName = (name: string): string | undefined => {
  if (name.length === 0) return "the user name is empty";
  if (CONTROL.test(name)) return "the user name contains control characters";
  return undefined;
};

/** Reads one quoted string at `start`; returns its value and the index after the closing quote. */
const readQuoted = (text: string, start: number): { value: string; end: number } | undefined => {
  if (text[start] !== '"') return undefined;
  let value = "";
  let i = start + 1;
  for (;;) {
    const next = text.indexOf('"', i);
    if (next < 0) return undefined;
    value += text.slice(i, next);
    if (text[next + 1] !== '"') return { value, end: next + 1 };
    value += '"';
    i = next + 2;
  }
};

const skipBlanks = (text: string, i: number): number => {
  let j = i;
  while (text[j] === " " || text[j] === "\t") j++;
  return j;
};

const lineError = (message: string): Line => ({ kind: "error", message });

const parseLine = (raw: string): Line => {
  const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
  const start = skipBlanks(text, 0);
  if (start === text.length || text[start] === "#") return { kind: "other" };
  const name = readQuoted(text, start);
  if (name === undefined) return lineError('expected "name" "verifier" (a quoted user name first)');
  const afterName = skipBlanks(text, name.end);
  if (afterName === name.end) return lineError("expected a space after the user name");
  const secret = readQuoted(text, afterName);
  if (secret === undefined) return lineError("expected a quoted verifier after the user name");
  if (!BLANK.test(text.slice(secret.end))) return lineError("unexpected text after the verifier");
  return { kind: "entry", name: name.value, secret: secret.value };
};

/** Why a secret cannot be used, without ever repeating the secret. */
const secretProblem = (secret: string): string | ScramVerifier => {
  if (MD5_HASH.test(secret)) return "md5 hashes are not accepted; only SCRAM-SHA-256 verifiers are accepted";
  if (!secret.startsWith("SCRAM-SHA-256$")) {
    return "this looks like a plaintext password, which is not accepted; only SCRAM-SHA-256 verifiers are accepted";
  }
  const verifier = parseScramVerifier(secret);
  return isPgwardenError(verifier) ? verifier.message : verifier;
};

// A missing quote can run a secret into the name ("alice""md5…): only short, quote-free names are shown.
const describeUser = (name: string): string =>
  name.length <= 63 && !name.includes('"') ? `user ${JSON.stringify(name)}` : "the user on this line";

const HINT = " (create one with `pgwarden users add`)";

/** The entries of a file: each user's line number and verifier, or the first problem. */
const parseEntries = (
  text: string,
): Map<string, { line: number; verifier: ScramVerifier }> | PgwardenError => {
  const entries = new Map<string, { line: number; verifier: ScramVerifier }>();
  const lines = text.replace(/^\uFEFF/, "").split("\n");
  for (const [index, raw] of lines.entries()) {
    const lineNo = index + 1;
    const line = parseLine(raw);
    if (line.kind === "other") continue;
    if (line.kind === "error") return fileError(lineNo, line.message);
    const nameProblem = checkUserName(line.name);
    if (nameProblem !== undefined) return fileError(lineNo, nameProblem);
    const shown = describeUser(line.name);
    const previous = entries.get(line.name);
    if (previous !== undefined) {
      return fileError(lineNo, `${shown} is already defined on line ${previous.line}`);
    }
    const verifier = secretProblem(line.secret);
    if (typeof verifier === "string") return fileError(lineNo, `${shown}: ${verifier}${HINT}`);
    entries.set(line.name, { line: lineNo, verifier });
  }
  return entries;
};

/**
 * Parses a users file into user name → verifier. The first bad line is an error naming it;
 * md5 hashes and plaintext passwords are refused.
 *
 * @example parseUsersFile('"alice" "SCRAM-SHA-256$4096:…"\n') // Map { "alice" => ScramVerifier }
 */
export const parseUsersFile = (text: string): Map<string, ScramVerifier> | PgwardenError => {
  const entries = parseEntries(text);
  if (!(entries instanceof Map)) return entries;
  return new Map(Array.from(entries, ([name, { verifier }]) => [name, verifier]));
};

const quote = (s: string): string => `"${s.replaceAll('"', '""')}"`;

const formatEntry = (name: string, verifier: string): string => `${quote(name)} ${quote(verifier)}`;

/**
 * A whole users file for these entries, one line each, in iteration order.
 *
 * @example formatUsersFile(new Map([["alice", verifier]])) // '"alice" "SCRAM-SHA-256$…"\n'
 */
export const formatUsersFile = (users: Iterable<readonly [string, ScramVerifier]>): string =>
  Array.from(users, ([name, verifier]) => `${formatEntry(name, formatScramVerifier(verifier))}\n`).join("");

/**
 * Sets one user's verifier: replaces that user's line, or appends one. Comments, blank lines,
 * other entries and the file's line endings are left as they were. Refuses a file that does not
 * parse, so a broken file is never silently rewritten.
 *
 * @example upsertUser("# staff\n", "alice", createScramVerifier(pw)) // '# staff\n"alice" "SCRAM-SHA-256$…"\n'
 */
export const upsertUser = (text: string, name: string, verifier: string): string | PgwardenError => {
  const entries = parseEntries(text);
  if (!(entries instanceof Map)) return entries;
  const nameProblem = checkUserName(name);
  if (nameProblem !== undefined) return pgwardenError("PGW_USERS_FILE", SqlState.internalError, nameProblem);
  const parsed = parseScramVerifier(verifier);
  if (isPgwardenError(parsed)) return pgwardenError("PGW_USERS_FILE", SqlState.internalError, parsed.message);
  const entry = formatEntry(name, verifier);
  const existing = entries.get(name);
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  if (existing === undefined) {
    const separator = text === "" || text.endsWith("\n") ? "" : eol;
    return `${text}${separator}${entry}${eol}`;
  }
  const lines = text.split("\n");
  const old = lines[existing.line - 1] ?? "";
  const bom = existing.line === 1 && old.startsWith("\uFEFF") ? "\uFEFF" : "";
  lines[existing.line - 1] = `${bom}${entry}${old.endsWith("\r") ? "\r" : ""}`;
  return lines.join("\n");
};
