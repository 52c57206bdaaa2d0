import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { isPgwardenError, type PgwardenError } from "../../src/errors.ts";
import {
  decodeBind,
  decodeClose,
  decodeDescribe,
  decodeParse,
  encodeBind,
  encodeClose,
  encodeDescribe,
  encodeParse,
} from "../../src/protocol/frontend.ts";
import { Backend } from "../../src/protocol/messageTypes.ts";
import {
  encodeCloseComplete,
  encodeParseComplete,
  MAX_STATEMENT_NAME_BYTES,
  rewriteStatementName,
} from "../../src/protocol/rewrite.ts";

const noNul = fc.string({ unit: "grapheme", maxLength: 40 }).filter((s) => !s.includes("\0"));
// Names fit in 63 UTF-8 bytes.
const name = noNul.filter((s) => Buffer.byteLength(s) <= MAX_STATEMENT_NAME_BYTES);
const bytes = fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u));
const param = fc.option(bytes, { nil: null });
const format = fc.integer({ min: -32768, max: 32767 });

const parseMsg = fc.record({
  name,
  query: fc.string({ maxLength: 300 }).filter((s) => !s.includes("\0")),
  paramTypes: fc.array(fc.integer({ min: 0, max: 0xffffffff }), { maxLength: 8 }),
});
const bindMsg = fc
  .record({
    portal: name,
    statement: name,
    params: fc.array(param, { maxLength: 8 }),
    resultFormats: fc.array(format, { maxLength: 5 }),
  })
  .chain((b) =>
    fc
      .oneof(
        fc.constant([] as number[]),
        fc.array(format, { minLength: 1, maxLength: 1 }),
        fc.array(format, { minLength: b.params.length, maxLength: b.params.length }),
      )
      .map((paramFormats) => ({ ...b, paramFormats })),
  );
const target = fc.constantFrom("S" as const, "P" as const);

const ok = <A>(a: A | PgwardenError): A => {
  if (isPgwardenError(a)) throw new Error(a.message);
  return a;
};

describe("rewriteStatementName", () => {
  test.prop([parseMsg, name])("Parse: only the statement name changes", (p, to) => {
    const msg = encodeParse(p);
    const copy = Buffer.from(msg);
    const out = ok(rewriteStatementName(msg, to));
    expect(ok(decodeParse(out))).toEqual({ ...p, paramTypes: p.paramTypes.map((t) => t >>> 0), name: to });
    expect(msg.equals(copy)).toBe(true);
  });

  test.prop([bindMsg, name])("Bind: the statement name changes, the portal and values do not", (b, to) => {
    const out = ok(rewriteStatementName(encodeBind(b), to));
    const d = ok(decodeBind(out));
    expect({ ...d, params: d.params.map((v) => (v === null ? null : Buffer.from(v))) }).toEqual({
      ...b,
      statement: to,
    });
  });

  test.prop([target, name, name])(
    "Describe and Close: statements renamed, portals untouched",
    (t, from, to) => {
      for (const [enc, dec] of [
        [encodeDescribe, decodeDescribe],
        [encodeClose, decodeClose],
      ] as const) {
        const msg = enc({ target: t, name: from });
        const out = ok(rewriteStatementName(msg, to));
        expect(ok(dec(out))).toEqual({ target: t, name: t === "S" ? to : from });
        if (t === "P") expect(out).toBe(msg);
      }
    },
  );

  it("refuses names PostgreSQL would truncate or cut at a NUL", () => {
    const msg = encodeParse({ name: "a", query: "select 1", paramTypes: [] });
    expect(isPgwardenError(rewriteStatementName(msg, "x".repeat(64)))).toBe(true);
    expect(isPgwardenError(rewriteStatementName(msg, "a\0b"))).toBe(true);
    expect(ok(decodeParse(ok(rewriteStatementName(msg, "é".repeat(31))))).name).toBe("é".repeat(31));
  });

  it("rejects malformed and unrelated messages instead of guessing", () => {
    const parse = encodeParse({ name: "a", query: "select 1", paramTypes: [] });
    expect(isPgwardenError(rewriteStatementName(parse.subarray(0, parse.length - 1), "b"))).toBe(true);
    const noNul = Buffer.from([0x50, 0, 0, 0, 6, 0x61, 0x62]);
    expect(isPgwardenError(rewriteStatementName(noNul, "b"))).toBe(true);
    const execute = Buffer.from([0x45, 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    expect(isPgwardenError(rewriteStatementName(execute, "b"))).toBe(true);
    expect(isPgwardenError(rewriteStatementName(Buffer.from([0x44, 0, 0, 0, 6, 0x58, 0]), "b"))).toBe(true);
  });

  it("encodes the local answers", () => {
    expect(encodeParseComplete()).toEqual(Buffer.from([Backend.ParseComplete, 0, 0, 0, 4]));
    expect(encodeCloseComplete()).toEqual(Buffer.from([Backend.CloseComplete, 0, 0, 0, 4]));
  });
});
