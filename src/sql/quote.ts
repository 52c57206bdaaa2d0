/**
 * Quoting for SQL text pgwarden generates itself. Both forms are valid whatever the session's
 * standard_conforming_strings is, so replayed text never changes meaning on another connection.
 */

/** A string literal: E'' (backslashes doubled) when the value holds a backslash, '' otherwise. */
export const quoteLiteral = (s: string): string => {
  const body = s.replaceAll("'", "''");
  return s.includes("\\") ? `E'${body.replaceAll("\\", "\\\\")}'` : `'${body}'`;
};

/** A double-quoted identifier; always quoted, because lower-case names mean the same either way. */
export const quoteIdent = (s: string): string => `"${s.replaceAll('"', '""')}"`;
