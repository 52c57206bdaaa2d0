import {
  commonlyMappedToNothing,
  lCat,
  nonAsciiSpace,
  prohibitedOutput,
  randAlCat,
  unassigned,
} from "./internal/saslprepTables.ts";

/** Sorted [start, end, start, end, …] code point pairs, searched by bisection. */
type RangeTable = Uint32Array;

const compile = (lines: readonly string[]): RangeTable => {
  const bounds: number[] = [];
  for (const token of lines.join(" ").split(" ")) {
    const [first, last = first] = token.split("-");
    bounds.push(Number.parseInt(first!, 16), Number.parseInt(last!, 16));
  }
  return Uint32Array.from(bounds);
};

const inTable = (table: RangeTable, cp: number): boolean => {
  let lo = 0;
  let hi = table.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < table[mid * 2]!) hi = mid - 1;
    else if (cp > table[mid * 2 + 1]!) lo = mid + 1;
    else return true;
  }
  return false;
};

const B1 = compile(commonlyMappedToNothing);
const C12 = compile(nonAsciiSpace);
const PROHIBITED = compile(prohibitedOutput);
const A1 = compile(unassigned);
const D1 = compile(randAlCat);
const D2 = compile(lCat);

/**
 * SASLprep (RFC 4013) as PostgreSQL applies it to passwords. Returns the prepared string, or
 * `undefined` when the input is prohibited.
 *
 * 1. Map: non-ASCII spaces (C.1.2) become U+0020; "commonly mapped to nothing" (B.1) are dropped.
 * 2. Prohibit, on the mapped string: an empty result, any C.1.2–C.9 character, any code point
 *    unassigned in Unicode 3.2 (A.1), and strings breaking the RFC 3454 §6 bidi rule (RandALCat
 *    with LCat, or RandALCat not first and last).
 * 3. Normalize with NFKC.
 *
 * RFC 4013 checks the normalized output instead; PostgreSQL checks the mapped input, and
 * verifiers only agree if we do the same ("a\u0340", "\uFB1D", "\u05D0\u2122\u05D1" and "\u{1F100}x"
 * tell the two apart; test/auth/postgres.test.ts checks them against a real server).
 *
 * @example saslprep("I\u00ADX") === "IX"; saslprep("\u2168") === "IX"; saslprep("a\u0007b") === undefined
 */
export const saslprep = (input: string): string | undefined => {
  let mapped = "";
  const cps: number[] = [];
  for (const ch of input) {
    const cp = ch.codePointAt(0)!;
    if (inTable(C12, cp)) {
      mapped += " ";
      cps.push(0x20);
    } else if (!inTable(B1, cp)) {
      mapped += ch;
      cps.push(cp);
    }
  }
  if (cps.length === 0) return undefined;
  let hasRandAl = false;
  let hasL = false;
  for (const cp of cps) {
    // Lone surrogates iterate as single code points and fall in C.5.
    if (inTable(PROHIBITED, cp) || inTable(A1, cp)) return undefined;
    if (inTable(D1, cp)) hasRandAl = true;
    if (inTable(D2, cp)) hasL = true;
  }
  if (hasRandAl && (hasL || !inTable(D1, cps[0]!) || !inTable(D1, cps[cps.length - 1]!))) return undefined;
  return mapped.normalize("NFKC");
};

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const isAscii = (bytes: Uint8Array): boolean => bytes.every((b) => b < 0x80);

/**
 * The bytes a SCRAM password is hashed as, the way PostgreSQL decides them (server when it
 * builds a verifier, libpq when it logs in):
 * - pure ASCII: unchanged (control characters included);
 * - not valid UTF-8 (only possible for byte input): unchanged;
 * - otherwise SASLprep ({@link saslprep}); when SASLprep prohibits the input, the original
 *   bytes unchanged.
 *
 * A string is encoded as UTF-8 first (Node replaces lone surrogates by U+FFFD).
 *
 * @example scramPasswordBytes("\u2168").toString() === "IX"
 */
export const scramPasswordBytes = (password: string | Uint8Array): Buffer => {
  const raw = typeof password === "string" ? Buffer.from(password, "utf8") : Buffer.from(password);
  if (isAscii(raw)) return raw;
  let text: string;
  try {
    text = strictUtf8.decode(raw);
  } catch {
    return raw;
  }
  const prepared = saslprep(text);
  return prepared === undefined ? raw : Buffer.from(prepared, "utf8");
};
