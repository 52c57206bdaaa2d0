import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { CanonicalJsonError, canonicalJson } from "../../src/audit/canonicalJson.ts";

const json = fc.jsonValue();

// Rebuilds every object with its keys in reverse order, so only the data stays the same.
const reorder = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(reorder);
  if (typeof v === "object" && v !== null) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).reverse()) {
      // defineProperty, so a "__proto__" key stays data rather than setting the prototype.
      Object.defineProperty(out, k, { value: reorder((v as Record<string, unknown>)[k]), enumerable: true });
    }
    return out;
  }
  return v;
};

describe("canonicalJson", () => {
  test.prop([json])("parses back to the same data", (v) => {
    expect(JSON.parse(canonicalJson(v))).toStrictEqual(JSON.parse(JSON.stringify(v)));
  });

  test.prop([json])("does not depend on key order", (v) => {
    expect(canonicalJson(reorder(v))).toBe(canonicalJson(v));
  });

  test.prop([json])("is a fixed point: canonical(parse(canonical(v))) = canonical(v)", (v) => {
    const c = canonicalJson(v);
    expect(canonicalJson(JSON.parse(c))).toBe(c);
  });

  it("sorts keys, drops whitespace and undefined members", () => {
    expect(canonicalJson({ b: 1, a: [true, null, "x"], c: undefined, A: { z: 0, y: -0 } })).toBe(
      '{"A":{"y":0,"z":0},"a":[true,null,"x"],"b":1}',
    );
  });

  it("refuses what JSON cannot carry faithfully", () => {
    expect(() => canonicalJson({ n: Number.NaN })).toThrow(CanonicalJsonError);
    expect(() => canonicalJson({ n: Infinity })).toThrow(CanonicalJsonError);
    expect(() => canonicalJson({ d: new Date(0) })).toThrow(CanonicalJsonError);
    expect(() => canonicalJson({ b: 1n })).toThrow(CanonicalJsonError);
  });
});
