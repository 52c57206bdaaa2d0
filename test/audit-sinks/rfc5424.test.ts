import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  escapeParamValue,
  formatMessage,
  frame,
  headerField,
  priority,
  syslogHeader,
} from "../../src/adapters/audit/rfc5424.ts";
import { unframe } from "./support/unframe.ts";

const header = syslogHeader({
  facility: "authpriv",
  hostname: "db proxy 1",
  appName: "pgwarden",
  procId: "4242",
  msgId: "audit",
  sdId: "pgwarden@32473",
});

describe("RFC 5424 / 5425", () => {
  it("formats header, structured data and a BOM-prefixed MSG", () => {
    const msg = formatMessage(
      header,
      { seq: 7, id: 'a"b]c\\d', text: '{"k":"é"}' },
      new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)),
    );
    expect(msg).toBe(
      '<86>1 2026-01-02T03:04:05.006Z dbproxy1 pgwarden 4242 audit [pgwarden@32473 seq="7" id="a\\"b\\]c\\\\d"] \uFEFF{"k":"é"}',
    );
  });

  it("computes PRI from facility with severity informational", () => {
    expect(priority("kern")).toBe(6);
    expect(priority("local7")).toBe(23 * 8 + 6);
  });

  it("keeps header fields printable and bounded, NILVALUE when empty", () => {
    expect(headerField("a b\tc", 255)).toBe("abc");
    expect(headerField("ünï", 48)).toBe("n");
    expect(headerField("", 48)).toBe("-");
    expect(headerField("x".repeat(60), 48)).toHaveLength(48);
  });

  it("rejects an SD-ID that is not an SD-NAME", () => {
    expect(() => syslogHeader({ ...header, sdId: "bad id" })).toThrow(RangeError);
    expect(() => syslogHeader({ ...header, sdId: 'q"@1' })).toThrow(RangeError);
  });

  fcTest.prop([fc.array(fc.string({ unit: "grapheme", maxLength: 300 }), { minLength: 1, maxLength: 20 })])(
    "octet counting frames any UTF-8 messages so a receiver splits them back exactly",
    (messages) => {
      const stream = Buffer.concat(messages.map(frame));
      expect(unframe(stream)).toEqual(messages);
    },
  );

  fcTest.prop([fc.string({ unit: "grapheme" })])(
    "PARAM-VALUE escaping leaves no bare quote or bracket",
    (s) => {
      const escaped = escapeParamValue(s);
      expect(escaped.replace(/\\["\\\]]/g, "")).not.toMatch(/["\\\]]/);
      expect(escaped.replace(/\\(["\\\]])/g, "$1")).toBe(s);
    },
  );
});
