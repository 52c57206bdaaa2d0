import { execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { endPointHash, tlsServerEndPoint } from "../../src/auth/channelBinding.ts";
import { decodeOid, readDer } from "../../src/auth/internal/der.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { testCerts } from "../support/certs.ts";

const certs = testCerts();
const der = (path: string) => new X509Certificate(readFileSync(path)).raw;
/** openssl's own digest of the DER certificate, as an independent computation. */
const opensslFingerprint = (path: string, hash: string) =>
  Buffer.from(
    execFileSync("openssl", ["x509", "-in", path, "-noout", "-fingerprint", `-${hash}`], { encoding: "utf8" })
      .split("=")[1]!
      .trim()
      .replaceAll(":", ""),
    "hex",
  );

describe("tls-server-end-point (RFC 5929)", () => {
  it.each([
    ["sha256WithRSAEncryption", "sha256", certs.server.cert],
    ["sha384WithRSAEncryption (ECDSA key)", "sha384", certs.serverEcdsa.cert],
    ["sha1WithRSAEncryption", "sha256", certs.serverSha1.cert],
    ["RSASSA-PSS (SHA-384 in its parameters)", "sha384", certs.serverPss.cert],
  ])("hashes a %s certificate with %s", (_name, hash, path) => {
    expect(endPointHash(der(path))).toBe(hash);
    expect(tlsServerEndPoint(der(path))).toEqual(opensslFingerprint(path, hash));
  });

  it("refuses a certificate whose signature has no separate hash (Ed25519)", () => {
    const dir = mkdtempSync(join(tmpdir(), "pgwarden-ed25519-"));
    try {
      const run = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
      run("genpkey", "-algorithm", "ED25519", "-out", "k.pem");
      run("req", "-x509", "-new", "-key", "k.pem", "-subj", "/CN=ed", "-days", "1", "-out", "c.pem");
      const result = tlsServerEndPoint(der(join(dir, "c.pem")));
      expect(isPgwardenError(result) && result.message).toContain("1.3.101.112");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses bytes that are not a certificate", () => {
    expect(isPgwardenError(tlsServerEndPoint(Buffer.from("not a certificate")))).toBe(true);
  });

  test.prop([fc.uint8Array({ maxLength: 300 })], { numRuns: 300 })(
    "never throws on arbitrary input",
    (bytes) => {
      const result = tlsServerEndPoint(Buffer.from(bytes));
      expect(isPgwardenError(result)).toBe(true);
    },
  );

  test.prop([fc.uint8Array({ minLength: 0, maxLength: 64 }), fc.nat({ max: 70 })], { numRuns: 300 })(
    "DER reader stays inside the buffer",
    (bytes, offset) => {
      const buf = Buffer.from(bytes);
      const e = readDer(buf, offset);
      if (e !== undefined) expect(e.end).toBeLessThanOrEqual(buf.length);
    },
  );

  it("decodes object identifiers", () => {
    expect(decodeOid(Buffer.from("2a864886f70d01010b", "hex"))).toBe("1.2.840.113549.1.1.11");
    expect(decodeOid(Buffer.from("2b6570", "hex"))).toBe("1.3.101.112");
    expect(decodeOid(Buffer.from("2a86", "hex"))).toBeUndefined();
  });

  it("matches a plain SHA-256 of the DER for the default server certificate", () => {
    const d = der(certs.server.cert);
    expect(tlsServerEndPoint(d)).toEqual(createHash("sha256").update(d).digest());
  });
});
