import { spawnSync } from "node:child_process";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { saslprep, scramPasswordBytes } from "../../src/auth/saslprep.ts";

describe("saslprep", () => {
  it.each([
    // RFC 4013 §3 examples
    ["I\u00ADX", "IX"],
    ["user", "user"],
    ["USER", "USER"],
    ["\u00AA", "a"],
    ["\u2168", "IX"],
    // mapping: non-ASCII spaces become U+0020, B.1 characters vanish
    ["a\u00A0b\u3000c", "a b c"],
    ["pass\u200Cword\uFEFF", "password"],
    // U+200B is in both C.1.2 and B.1; like PostgreSQL, space wins
    ["pass\u200Bword", "pass word"],
    // NFKC
    ["\uFB01", "fi"],
    ["e\u0301", "\u00E9"],
    ["\uFF21\uFF22", "AB"],
    // a bidi string that satisfies the rule
    ["\u05D0\u05D1", "\u05D0\u05D1"],
  ])("prepares %j as %j", (input, expected) => {
    expect(saslprep(input)).toBe(expected);
  });

  it.each([
    ["\u0007", "ASCII control (C.2.1), RFC 4013 example"],
    ["\u0627\u0031", "RandALCat not last (bidi), RFC 4013 example"],
    ["\u00AD", "empty after mapping"],
    ["a\uE000", "private use (C.3)"],
    ["a\uFFFE", "non-character (C.4)"],
    ["a\uD800", "lone surrogate (C.5)"],
    ["a\u200E", "left-to-right mark (C.8)"],
    ["a\u{E0041}", "tag character (C.9)"],
    ["a\u0221", "unassigned in Unicode 3.2 (A.1)"],
    ["\u{1F600}", "emoji: unassigned in Unicode 3.2"],
    ["\u05D0a\u05D1", "RandALCat with LCat"],
  ])("prohibits %j (%s)", (input) => {
    expect(saslprep(input)).toBeUndefined();
  });

  // Checked on the mapped input, before NFKC, as PostgreSQL does (test/auth/postgres.test.ts
  // confirms each against a real server); RFC 4013 would decide these the other way.
  it.each([
    ["a\u0340", undefined], // C.8 before NFKC, U+0300 after
    ["\u{1F100}x", undefined], // unassigned in 3.2 before NFKC, "0." after
    ["\uFB1D", "\u05D9\u05B4"], // RandALCat before NFKC, ends with a mark after
    ["\u05D0\u2122\u05D1", "\u05D0TM\u05D1"], // no LCat before NFKC, "TM" after
  ])("decides %j on the input before normalization", (input, expected) => {
    expect(saslprep(input)).toBe(expected);
  });
});

describe("scramPasswordBytes", () => {
  it("passes pure ASCII through untouched, control characters included", () => {
    expect(scramPasswordBytes("a\u0007b\u007F")).toEqual(Buffer.from("a\u0007b\u007F", "latin1"));
  });

  it("uses the SASLprep result when there is one", () => {
    expect(scramPasswordBytes("\u2168").toString("utf8")).toBe("IX");
    expect(scramPasswordBytes(Buffer.from("I\u00ADX", "utf8")).toString("utf8")).toBe("IX");
  });

  it("falls back to the original bytes when SASLprep prohibits the input", () => {
    expect(scramPasswordBytes("\u0007\u2168")).toEqual(Buffer.from("\u0007\u2168", "utf8"));
    expect(scramPasswordBytes("\u00AD")).toEqual(Buffer.from([0xc2, 0xad]));
  });

  it("passes bytes that are not UTF-8 through untouched", () => {
    const bytes = Buffer.from([0x70, 0xff, 0xe2, 0x85]);
    expect(scramPasswordBytes(bytes)).toEqual(bytes);
  });

  it("does not alias the caller's buffer", () => {
    const bytes = Buffer.from("abc");
    const out = scramPasswordBytes(bytes);
    out[0] = 0;
    expect(bytes.toString()).toBe("abc");
  });

  test.prop([fc.string({ unit: "binary-ascii" })])("ASCII passwords are used as they are", (s) => {
    expect(scramPasswordBytes(s)).toEqual(Buffer.from(s, "latin1"));
  });

  test.prop([fc.string({ unit: "grapheme" })])("yields the raw bytes or the prepared string", (s) => {
    const raw = Buffer.from(s, "utf8");
    const prepared = saslprep(s);
    const out = scramPasswordBytes(s);
    if (/^[\x00-\x7F]*$/.test(s) || prepared === undefined) expect(out).toEqual(raw);
    else expect(out).toEqual(Buffer.from(prepared, "utf8"));
  });
});

// The tables were generated from Python's stringprep module; this re-checks the whole procedure
// against an independent Python implementation when python3 is around.
const python = spawnSync("python3", ["-c", "import stringprep, unicodedata"], { encoding: "utf8" });
const PY_SASLPREP = `
import json, sys, stringprep, unicodedata
def prep(s):
    m = "".join(" " if stringprep.in_table_c12(c) else c for c in s if not stringprep.in_table_b1(c))
    if not m: return None
    for c in m:
        if any(f(c) for f in (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
               stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
               stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)):
            return None
    if any(stringprep.in_table_d1(c) for c in m):
        if any(stringprep.in_table_d2(c) for c in m): return None
        if not (stringprep.in_table_d1(m[0]) and stringprep.in_table_d1(m[-1])): return None
    return unicodedata.normalize("NFKC", m)
print(json.dumps([prep(s) for s in json.load(sys.stdin)]))
`;

describe.skipIf(python.status !== 0)("saslprep against Python's stringprep tables", () => {
  it("agrees on random strings from interesting code point ranges", () => {
    const ranges: [number, number][] = [
      [0x20, 0x7e],
      [0x80, 0x24f],
      [0x300, 0x36f],
      [0x590, 0x6ff],
      [0x1680, 0x180f],
      [0x2000, 0x218f],
      [0x2460, 0x24ff],
      [0x3000, 0x30ff],
      [0xfb00, 0xfeff],
      [0xff00, 0xffff],
      [0x1d400, 0x1d7ff],
      [0x1f100, 0x1f1ff],
      [0xe0000, 0xe007f],
    ];
    const codePoint = fc
      .constantFrom(...ranges)
      .chain(([lo, hi]) => fc.integer({ min: lo, max: hi }))
      .filter((cp) => cp < 0xd800 || cp > 0xdfff);
    const samples = fc.sample(fc.array(codePoint, { minLength: 1, maxLength: 6 }), {
      numRuns: 3000,
      seed: 42,
    });
    // Code points assigned after Unicode 3.2 are refused before NFKC, so the two NFKC versions agree.
    const inputs = samples.map((cps) => String.fromCodePoint(...cps));
    const out = spawnSync("python3", ["-c", PY_SASLPREP], {
      input: JSON.stringify(inputs),
      encoding: "utf8",
    });
    expect(out.status, out.stderr).toBe(0);
    const expected = JSON.parse(out.stdout) as (string | null)[];
    const mismatches = inputs
      .map((s, i) => ({ s, ours: saslprep(s) ?? null, theirs: expected[i] }))
      .filter((r) => r.ours !== r.theirs);
    expect(mismatches).toEqual([]);
  });
});
