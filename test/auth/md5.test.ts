import { createHash } from "node:crypto";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { md5PasswordMessage } from "../../src/auth/md5.ts";

describe("md5PasswordMessage", () => {
  // Computed by hand with md5sum:
  //   printf 'secretpostgres' | md5sum                                   -> 53f48b7c…217d
  //   { printf '53f48b7c4b76a86ce72276c5755f217d'; printf '\x01\x02\x03\x04'; } | md5sum -> bb41a296…abff
  it("matches a hand-computed vector", () => {
    expect(md5PasswordMessage("postgres", "secret", Buffer.from([1, 2, 3, 4]))).toBe(
      "md5bb41a296aab6baccb36ff243a562abff",
    );
  });

  // printf 'pässwordjoé' | md5sum -> ed86164f…0692, then with salt ff 00 10 7f -> e4fc4363…784e
  it("hashes non-ASCII user and password as UTF-8", () => {
    expect(md5PasswordMessage("jo\u00E9", "p\u00E4ssword", Buffer.from([0xff, 0x00, 0x10, 0x7f]))).toBe(
      "md5e4fc4363c09844cab0525e97de8f784e",
    );
  });

  test.prop([fc.string(), fc.string(), fc.uint8Array({ minLength: 4, maxLength: 4 })])(
    "is md5 + 32 lower-case hex digits and depends on the salt",
    (user, password, salt) => {
      const out = md5PasswordMessage(user, password, Buffer.from(salt));
      expect(out).toMatch(/^md5[0-9a-f]{32}$/);
      const inner = createHash("md5").update(`${password}${user}`).digest("hex");
      const outer = createHash("md5")
        .update(Buffer.concat([Buffer.from(inner), Buffer.from(salt)]))
        .digest("hex");
      expect(out).toBe(`md5${outer}`);
    },
  );

  it.each([0, 3, 5])("refuses a %d-byte salt", (n) => {
    expect(() => md5PasswordMessage("u", "p", Buffer.alloc(n))).toThrow(RangeError);
  });
});
