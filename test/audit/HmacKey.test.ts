import { createHash, createHmac, randomBytes } from "node:crypto";
import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { hmacKeyFromBytes } from "../../src/audit/HmacKey.ts";
import { HMAC_SUFFIX_LENGTH, lineHash, sealLine } from "../../src/audit/recordLine.ts";
import { ok } from "./support/auditLog.ts";

// Written out from RFC 2104 / RFC 6962 with Node's streaming objects, independent of the one-shot code.
const raw = randomBytes(32);
const key = ok(hmacKeyFromBytes(raw));
const hmac = (text: string) => createHmac("sha256", raw).update(text).digest("hex");
const leaf = (text: string) => createHash("sha256").update(Uint8Array.of(0)).update(text).digest("hex");
/** A record body as canonical JSON of one string member: any Unicode text, escaped as JSON does. */
const bodyOf = (text: string) => `{"text":${JSON.stringify(text)}}`;

describe("HMAC key", () => {
  test.prop([fc.string({ unit: "binary", maxLength: 3000 })])(
    "mac is HMAC-SHA-256 of the text's UTF-8, for text of any length and alphabet",
    (text) => {
      expect(key.mac(text)).toBe(hmac(text));
      expect(key.mac(Buffer.from(text))).toBe(hmac(text));
    },
  );

  test.prop([fc.array(fc.string({ unit: "binary", maxLength: 3000 }), { minLength: 1, maxLength: 5 })])(
    "digestLine and digestBytes give a sealed line's body HMAC and its record hash H(0x00 ‖ line), and leave the key intact",
    (texts) => {
      for (const text of texts) {
        const body = bodyOf(text);
        const line = sealLine(body, key);
        expect(line.length - HMAC_SUFFIX_LENGTH).toBe(body.length - 1);
        expect(key.digestLine(line, HMAC_SUFFIX_LENGTH)).toEqual({ mac: hmac(body), hash: leaf(line) });
        // The same from the line's bytes where a chunk of a segment holds them, between others.
        const bytes = Buffer.from(`x\n${line}\ny`);
        const end = bytes.length - 2;
        expect(key.digestBytes(bytes, 2, end, HMAC_SUFFIX_LENGTH)).toEqual({
          mac: hmac(body),
          hash: leaf(line),
        });
        expect(lineHash(line)).toBe(leaf(line));
        // The pad byte borrowed for the leaf prefix is back: the next HMAC is still right.
        expect(key.mac(body)).toBe(hmac(body));
      }
    },
  );

  test.prop([fc.array(fc.string({ unit: "binary", maxLength: 3000 }), { minLength: 1, maxLength: 5 })])(
    "seal gives the sealed line of a body, its bytes and its record hash, and leaves the key intact",
    (texts) => {
      for (const text of texts) {
        const body = bodyOf(text);
        const line = `${body.slice(0, -1)},"hmac":"${hmac(body)}"}`;
        const sealed = key.seal(body);
        expect({ line: sealed.line, hash: sealed.hash }).toEqual({ line, hash: leaf(line) });
        // The bytes the writer copies are the line's UTF-8 encoding.
        expect(Buffer.from(sealed.bytes).equals(Buffer.from(line))).toBe(true);
        expect(sealLine(body, key)).toBe(line);
        expect(key.mac(body)).toBe(hmac(body));
      }
    },
  );
});
