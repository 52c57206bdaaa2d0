import * as Schema from "effect/Schema";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";

/**
 * Maps a verified client certificate to a pgwarden identity with ordered rules, first match wins.
 * The caller checks the chain and CRL first (`socket.authorized`); this module only reads names.
 * No rule matching means no identity, and the caller refuses the connection with 28000.
 */

export const CertField = Schema.Literals(["cn", "san-dns", "san-email", "san-uri"]);
export type CertField = typeof CertField.Type;

const TEMPLATE_TOKEN = /\$([\s\S]?)/gu;

/** Compiles a pattern anchored at both ends, or says why it cannot be. */
const compilePattern = (pattern: string): RegExp | string => {
  try {
    // Compiled alone first so a pattern like `a)|(b` cannot escape the anchoring group.
    new RegExp(pattern, "u");
    return new RegExp(`^(?:${pattern})$`, "u");
  } catch (e) {
    return `not a valid regular expression: ${(e as Error).message}`;
  }
};

const captureCount = (re: RegExp): number => new RegExp(`${re.source}|`, "u").exec("")!.length - 1;

/** Checks `$1`…`$9` and `$$` in a template against the pattern's capture count. */
const templateIssue = (template: string, captures: number): string | undefined => {
  if (template === "") return "must not be empty";
  for (const [token, ref] of template.matchAll(TEMPLATE_TOKEN)) {
    if (ref === "$") continue;
    if (!/^[1-9]$/.test(ref!)) return `"${token}" is not a capture reference; use $1 to $9, or $$ for "$"`;
    if (Number(ref) > captures)
      return `refers to $${ref} but the pattern has ${captures} capture group${captures === 1 ? "" : "s"}`;
  }
  return undefined;
};

export const CertMappingRule = Schema.Struct({
  match: CertField,
  /** Regular expression (Unicode mode), anchored: it must match the whole value. */
  pattern: Schema.String,
  /** The identity, with `$1`…`$9` replaced by the pattern's captures. */
  identity: Schema.String,
}).check(
  Schema.makeFilter((r) => {
    const re = compilePattern(r.pattern);
    if (typeof re === "string") return { path: ["pattern"], issue: re };
    const issue = templateIssue(r.identity, captureCount(re));
    return issue === undefined ? undefined : { path: ["identity"], issue };
  }),
);
export type CertMappingRule = typeof CertMappingRule.Type;

export const CertMappingConfig = Schema.Array(CertMappingRule);
export type CertMappingConfig = typeof CertMappingConfig.Type;

/** The part of `tls.TLSSocket.getPeerCertificate()` this module reads. */
export interface PeerCertificateNames {
  readonly subject?: { readonly CN?: string | readonly string[] } | null;
  readonly subjectaltname?: string;
}

export interface AltName {
  /** As Node prints it: `DNS`, `email`, `URI`, `IP Address`, `DirName`, `othername`, … */
  readonly type: string;
  readonly value: string;
}

/** Splits on top-level commas; inside `"…"` a backslash escapes the next character. */
const splitEntries = (text: string): string[] | undefined => {
  const entries: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i <= text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === "\\") i++;
      else if (c === '"') quoted = false;
      else if (c === undefined) return undefined;
    } else if (c === '"') quoted = true;
    else if (c === "," || c === undefined) {
      entries.push(text.slice(start, i));
      start = text[i + 1] === " " ? i + 2 : i + 1;
    }
  }
  return entries;
};

const jsonString = (text: string): string | undefined => {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === "string" ? v : undefined;
  } catch {
    return undefined;
  }
};

const parseEntry = (entry: string): AltName | undefined => {
  // Node writes an unsafe name as a JSON string after its prefix (`URI:"a\u002cb"`); older
  // releases put the prefix inside the quotes (`"URI:a\u002cb"`).
  const whole = entry.startsWith('"') ? jsonString(entry) : entry;
  if (whole === undefined) return undefined;
  const colon = whole.indexOf(":");
  if (colon <= 0) return undefined;
  const rest = whole.slice(colon + 1);
  const value = !entry.startsWith('"') && rest.startsWith('"') ? jsonString(rest) : rest;
  return value === undefined ? undefined : { type: whole.slice(0, colon), value };
};

/**
 * Parses Node's `subjectaltname` string (`DNS:a, email:b, URI:c`, unsafe names JSON-quoted).
 * Undefined when it is malformed: then no SAN rule may match, rather than a guess.
 */
export const parseSubjectAltName = (text: string): AltName[] | undefined => {
  if (text === "") return [];
  const entries = splitEntries(text);
  if (entries === undefined) return undefined;
  const out: AltName[] = [];
  for (const e of entries) {
    const name = parseEntry(e);
    if (name === undefined) return undefined;
    out.push(name);
  }
  return out;
};

const sanType: Record<Exclude<CertField, "cn">, string> = {
  "san-dns": "DNS",
  "san-email": "email",
  "san-uri": "URI",
};

/** Values of one field in certificate order; DNS names lower-cased as DNS is case-insensitive. */
const valuesOf = (field: CertField, cn: readonly string[], alt: readonly AltName[] | undefined): string[] => {
  // Two CNs make the subject ambiguous, so CN rules match neither.
  if (field === "cn") return cn.length === 1 ? [...cn] : [];
  const type = sanType[field];
  const values = (alt ?? []).filter((a) => a.type === type).map((a) => a.value);
  return field === "san-dns" ? values.map((v) => v.toLowerCase()) : values;
};

const expand = (template: string, m: RegExpExecArray): string =>
  template.replace(TEMPLATE_TOKEN, (_t, ref: string) => (ref === "$" ? "$" : (m[Number(ref)] ?? "")));

export interface CertIdentity {
  readonly identity: string;
  /** Index into the mapping rules, for the audit line. */
  readonly rule: number;
  readonly field: CertField;
  /** The certificate value the rule matched. */
  readonly value: string;
}

export interface CertMapper {
  /** The identity for a verified certificate, or undefined when no rule maps it. */
  readonly map: (cert: PeerCertificateNames | null | undefined) => CertIdentity | undefined;
}

interface CompiledMapping {
  readonly field: CertField;
  readonly re: RegExp;
  readonly identity: string;
}

const mappingError = (message: string): PgwardenError =>
  pgwardenError("PGW_CONFIG", SqlState.internalError, message);

/** Compiles mapping rules once; an invalid rule is an error naming its index. */
export const compileCertMapping = (rules: CertMappingConfig): CertMapper | PgwardenError => {
  const compiled: CompiledMapping[] = [];
  for (const [i, r] of rules.entries()) {
    const re = compilePattern(r.pattern);
    if (typeof re === "string") return mappingError(`access.certMapping[${i}].pattern: ${re}`);
    const issue = templateIssue(r.identity, captureCount(re));
    if (issue !== undefined) return mappingError(`access.certMapping[${i}].identity: ${issue}`);
    compiled.push({ field: r.match, re, identity: r.identity });
  }
  const needsAlt = compiled.some((c) => c.field !== "cn");
  return {
    map: (cert) => {
      if (cert === null || cert === undefined) return undefined;
      const rawCn = cert.subject?.CN;
      const cn = rawCn === undefined ? [] : typeof rawCn === "string" ? [rawCn] : rawCn;
      const alt = needsAlt ? parseSubjectAltName(cert.subjectaltname ?? "") : [];
      for (const [rule, c] of compiled.entries()) {
        for (const value of valuesOf(c.field, cn, alt)) {
          const m = c.re.exec(value);
          if (m === null) continue;
          // First match decides: an empty result is a refusal, not a reason to try the next rule.
          const identity = expand(c.identity, m);
          return identity === "" ? undefined : { identity, rule, field: c.field, value };
        }
      }
      return undefined;
    },
  };
};

/** One line for the log and audit event: which rule mapped which certificate value. */
export const describeCertIdentity = (mapped: CertIdentity | undefined): string =>
  mapped === undefined
    ? "client certificate matched no mapping rule"
    : `client certificate ${mapped.field} ${JSON.stringify(mapped.value)} mapped by certMapping[${mapped.rule}] to identity ${JSON.stringify(mapped.identity)}`;
