import { createHash, createHmac, pbkdf2Sync } from "node:crypto";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  createScramVerifier,
  deriveScramVerifier,
  formatScramVerifier,
  parseScramVerifier,
  type ScramVerifier,
} from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";

/** RFC 5802 §3 / RFC 7677 formulas, written out independently of src/auth. */
const referenceKeys = (password: Buffer, salt: Buffer, iterations: number) => {
  const salted = pbkdf2Sync(password, salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  return {
    storedKey: createHash("sha256").update(clientKey).digest().toString("base64"),
    serverKey: createHmac("sha256", salted).update("Server Key").digest().toString("base64"),
  };
};

// RFC 7677 §3: user "user", password "pencil".
const RFC_SALT = Buffer.from("W22ZaJ0SNY7soEsUEjb6gQ==", "base64");

const parsed = (text: string): ScramVerifier => {
  const v = parseScramVerifier(text);
  if (isPgwardenError(v)) throw new Error(v.message);
  return v;
};

describe("createScramVerifier", () => {
  it("matches the RFC 5802 derivation for the RFC 7677 password and salt", () => {
    const { storedKey, serverKey } = referenceKeys(Buffer.from("pencil"), RFC_SALT, 4096);
    expect(createScramVerifier("pencil", { salt: RFC_SALT, iterations: 4096 })).toBe(
      `SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$${storedKey}:${serverKey}`,
    );
  });

  it("defaults to 4096 iterations and a fresh random 16-byte salt", () => {
    const a = parsed(createScramVerifier("secret"));
    const b = parsed(createScramVerifier("secret"));
    expect(a.iterations).toBe(4096);
    expect(a.salt).toHaveLength(16);
    expect(a.salt.equals(b.salt)).toBe(false);
    expect(a.storedKey.equals(b.storedKey)).toBe(false);
  });

  it("honours the iteration count", () => {
    const v = parsed(createScramVerifier("secret", { iterations: 10_000, salt: RFC_SALT }));
    expect(v.iterations).toBe(10_000);
    expect(v.storedKey.toString("base64")).toBe(
      referenceKeys(Buffer.from("secret"), RFC_SALT, 10_000).storedKey,
    );
  });

  it("normalizes the password like PostgreSQL (SASLprep, else raw bytes)", () => {
    const salt = Buffer.alloc(16, 7);
    const opts = { salt, iterations: 4096 };
    expect(createScramVerifier("\u2168", opts)).toBe(createScramVerifier("IX", opts));
    expect(createScramVerifier("a\u00A0b", opts)).toBe(createScramVerifier("a b", opts));
    // prohibited: hashed as the UTF-8 bytes given
    const prohibited = "\u0007\u2168";
    const keys = referenceKeys(Buffer.from(prohibited, "utf8"), salt, 4096);
    expect(parsed(createScramVerifier(prohibited, opts)).storedKey.toString("base64")).toBe(keys.storedKey);
  });

  it("accepts raw bytes", () => {
    const salt = Buffer.alloc(16, 1);
    expect(createScramVerifier(Buffer.from("pencil"), { salt })).toBe(
      createScramVerifier("pencil", { salt }),
    );
  });

  it.each([0, -1, 1.5, Number.NaN, 2 ** 31])("throws RangeError for %d iterations", (iterations) => {
    expect(() => createScramVerifier("x", { iterations })).toThrow(RangeError);
  });

  it("throws RangeError for an empty salt", () => {
    expect(() => createScramVerifier("x", { salt: Buffer.alloc(0) })).toThrow(RangeError);
  });

  it("does not keep a reference to the caller's salt", () => {
    const salt = Buffer.alloc(16, 3);
    const v = deriveScramVerifier("x", { salt });
    salt.fill(0);
    expect(v.salt.equals(Buffer.alloc(16, 3))).toBe(true);
  });
});

describe("parseScramVerifier", () => {
  const good = createScramVerifier("pencil", { salt: RFC_SALT });
  const [, rest = ""] = good.split("$4096:");
  const [saltB64 = "", keys = ""] = rest.split("$");
  const [stored = "", server = ""] = keys.split(":");

  it("reads the fields as buffers", () => {
    const v = parsed(good);
    expect(v.iterations).toBe(4096);
    expect(v.salt.equals(RFC_SALT)).toBe(true);
    expect(v.storedKey.toString("base64")).toBe(stored);
    expect(v.serverKey.toString("base64")).toBe(server);
  });

  test.prop([fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.integer({ min: 1, max: 2 ** 31 - 1 })])(
    "round-trips through formatScramVerifier",
    (salt, iterations) => {
      const v: ScramVerifier = {
        iterations,
        salt: Buffer.from(salt),
        storedKey: Buffer.alloc(32, 1),
        serverKey: Buffer.alloc(32, 2),
      };
      expect(parsed(formatScramVerifier(v))).toEqual(v);
    },
  );

  it.each([
    ["empty", ""],
    ["md5 hash", "md5c4ca4238a0b923820dcc509a6f75849b"],
    ["plaintext", "hunter2"],
    ["lower-case prefix", good.replace("SCRAM-SHA-256", "scram-sha-256")],
    ["SHA-1", good.replace("SCRAM-SHA-256", "SCRAM-SHA-1")],
    ["missing keys", `SCRAM-SHA-256$4096:${saltB64}`],
    ["extra $ part", `${good}$x`],
    ["missing ServerKey", `SCRAM-SHA-256$4096:${saltB64}$${stored}`],
    ["extra colon", `SCRAM-SHA-256$4096:${saltB64}:x$${stored}:${server}`],
    ["zero iterations", good.replace("$4096:", "$0:")],
    ["negative iterations", good.replace("$4096:", "$-4096:")],
    ["leading zero", good.replace("$4096:", "$04096:")],
    ["fractional iterations", good.replace("$4096:", "$4096.5:")],
    ["too many iterations", good.replace("$4096:", "$2147483648:")],
    ["empty salt", good.replace(saltB64, "")],
    ["salt without padding", good.replace(saltB64, saltB64.replace(/=+$/, ""))],
    ["base64url salt", good.replace(saltB64, "W22ZaJ0SNY7soEsUEjb6g_==")],
    ["salt with whitespace", good.replace(saltB64, ` ${saltB64}`)],
    ["non-canonical padding bits", good.replace(saltB64, "W22ZaJ0SNY7soEsUEjb6gR==")],
    ["short StoredKey", good.replace(stored, Buffer.alloc(31).toString("base64"))],
    ["long ServerKey", good.replace(server, Buffer.alloc(33).toString("base64"))],
  ])("rejects %s", (_name, text) => {
    const v = parseScramVerifier(text);
    expect(isPgwardenError(v)).toBe(true);
    if (!isPgwardenError(v)) return;
    expect(v.code).toBe("PGW_CONFIG");
    expect(v.message).toMatch(/^invalid SCRAM-SHA-256 verifier: /);
    // never echoes secret material
    for (const secret of [stored, server, saltB64, "hunter2"]) {
      if (secret !== "") expect(v.message).not.toContain(secret);
    }
  });
});
