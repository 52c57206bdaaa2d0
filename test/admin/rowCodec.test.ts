import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  decodeDataRow,
  decodeRowDescription,
  encodeDataRow,
  encodeEmptyQueryResponse,
  encodeRowDescription,
} from "../../src/protocol/backend.ts";

/** The RowDescription and DataRow codecs the console added to src/protocol/backend.ts. */

const field = fc.record({
  name: fc.string({ unit: "grapheme" }).filter((s) => !s.includes("\0")),
  tableOid: fc.nat({ max: 0xffffffff }),
  columnAttr: fc.integer({ min: -32768, max: 32767 }),
  typeOid: fc.nat({ max: 0xffffffff }),
  typeSize: fc.integer({ min: -32768, max: 32767 }),
  typeModifier: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  format: fc.constantFrom(0, 1),
});

describe("row codecs", () => {
  test.prop([fc.array(field, { maxLength: 20 })])("RowDescription round-trips", (fields) => {
    expect(decodeRowDescription(encodeRowDescription(fields))).toEqual(fields);
  });

  test.prop([
    fc.array(fc.oneof(fc.string({ unit: "binary" }), fc.uint8Array(), fc.constant(null)), { maxLength: 30 }),
  ])("DataRow round-trips strings as UTF-8, bytes as is, and NULL", (values) => {
    const decoded = decodeDataRow(encodeDataRow(values));
    expect(decoded).toEqual(
      values.map((v) =>
        v === null ? null : typeof v === "string" ? Buffer.from(v, "utf8") : Buffer.from(v),
      ),
    );
  });

  it("writes PostgreSQL's bytes for a text column and a one-value row", () => {
    const t = encodeRowDescription([
      { name: "a", tableOid: 0, columnAttr: 0, typeOid: 25, typeSize: -1, typeModifier: -1, format: 0 },
    ]);
    expect(t.toString("hex")).toBe("540000001a0001610000000000000000000019ffffffffffff0000");
    expect(encodeDataRow(["é", null]).toString("hex")).toBe("4400000010000200000002c3a9ffffffff");
    expect(encodeEmptyQueryResponse().toString("hex")).toBe("4900000004");
  });

  it("rejects a DataRow whose value runs past the end", () => {
    const bad = Buffer.from("440000000e0001000000ff6162", "hex");
    expect(decodeDataRow(bad)).toMatchObject({ _tag: "PgwardenError", sqlstate: "08P01" });
  });
});
