import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { CanonicalJsonError, canonicalJson } from "../../src/audit/canonicalJson.ts";
import { type Envelope, recordJson } from "../../src/audit/recordJson.ts";

// canonicalJson is the definition; recordJson must give the same bytes for every input.
const reference = (event: Record<string, unknown>, env: Envelope) => canonicalJson({ ...event, ...env });

const envelope: fc.Arbitrary<Envelope> = fc.record({
  boot: fc.string(),
  hmacKey: fc.string(),
  id: fc.string(),
  instance: fc.string(),
  prev: fc.string(),
  schema: fc.integer(),
  seq: fc.nat(),
});
// Names that collide with the envelope, that JS orders on its own, or that would set a prototype.
const key = fc.oneof(
  fc.string(),
  fc.string({ unit: "binary" }),
  fc.constantFrom("kind", "boot", "seq", "prev", "0", "7", "10", "4294967295", "__proto__", "a", "b"),
);
const event = fc
  .tuple(
    fc.constantFrom("statement", "transition", "auth.success"),
    fc.array(
      fc.tuple(
        key,
        // Any code point, lone surrogates and control characters included: each string's escaping.
        fc.oneof(
          fc.jsonValue(),
          fc.jsonValue({ stringUnit: "binary" }),
          fc.jsonValue({ stringUnit: "binary-ascii" }),
        ),
      ),
    ),
  )
  .map(([kind, members]) => {
    const e: Record<string, unknown> = { kind };
    // defineProperty, so a "__proto__" member stays data as it would arrive from JSON.
    for (const [k, v] of members) Object.defineProperty(e, k, { value: v, enumerable: true, writable: true });
    return e;
  });

describe("recordJson", () => {
  test.prop([event, envelope], { numRuns: 500 })(
    "gives canonicalJson's bytes, first and again for the same shape",
    (e, env) => {
      const want = reference(e, env);
      expect(recordJson(e, env)).toBe(want);
      expect(recordJson(e, env)).toBe(want);
    },
  );

  it("writes a statement record with folded transitions natively and exactly", () => {
    const env: Envelope = {
      boot: "b",
      hmacKey: "k",
      id: "i-1",
      instance: "i",
      prev: "0".repeat(64),
      schema: 2,
      seq: 1,
    };
    const sorted = { cause: "Query", from: "ready.idle", machine: "client", to: "busy.simpleQuery", ts: "t" };
    const unsorted = {
      ts: "t",
      machine: "client",
      from: "ready.idle",
      to: "busy.simpleQuery",
      cause: "Query",
    };
    const e = (t: object) => ({
      kind: "statement",
      session: "c1",
      text: 'select "x"\n',
      rows: 1,
      durationMs: 0.25,
      transitions: [t, t],
      sqlstate: undefined,
    });
    expect(recordJson(e(sorted), env)).toBe(reference(e(sorted), env));
    expect(recordJson(e(unsorted), env)).toBe(reference(e(unsorted), env));
  });

  test.prop([
    fc.array(
      fc.dictionary(fc.constantFrom("cause", "from", "machine", "to", "ts"), fc.string({ unit: "binary" })),
    ),
  ])("writes nested objects as canonicalJson does, in order or not", (transitions) => {
    const env: Envelope = { boot: "b", hmacKey: "k", id: "i-1", instance: "i", prev: "p", schema: 2, seq: 1 };
    const e = { kind: "statement", transitions };
    expect(recordJson(e, env)).toBe(reference(e, env));
  });

  it("ignores a toJSON, as canonicalJson does", () => {
    const env: Envelope = { boot: "b", hmacKey: "k", id: "i-1", instance: "i", prev: "p", schema: 2, seq: 1 };
    const hidden = { a: 1 };
    Object.defineProperty(hidden, "toJSON", { value: () => "HIDDEN" });
    const list = ["x"] as string[] & { toJSON?: () => string };
    list.toJSON = () => "y";
    for (const e of [
      { kind: "statement", nested: hidden },
      { kind: "statement", paramFormats: list },
    ])
      expect(recordJson(e, env)).toBe(reference(e, env));
    const inherited = Object.create({ toJSON: () => "z" }) as Record<string, unknown>;
    expect(() => recordJson({ kind: "statement", nested: inherited }, env)).toThrow(CanonicalJsonError);
  });

  it("refuses what canonicalJson refuses", () => {
    const env: Envelope = { boot: "b", hmacKey: "k", id: "i-1", instance: "i", prev: "p", schema: 2, seq: 1 };
    for (const bad of [Number.NaN, Infinity, new Date(0), 1n, () => 1, Symbol("s")]) {
      expect(() => recordJson({ kind: "statement", x: bad }, env)).toThrow(CanonicalJsonError);
      expect(() => recordJson({ kind: "statement", nested: [{ x: bad }] }, env)).toThrow(CanonicalJsonError);
    }
  });
});
