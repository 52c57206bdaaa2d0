import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ensureLocalCertificates } from "../../src/adapters/tls/localCa.ts";
import { isPgwardenError } from "../../src/errors.ts";

/** The embedded default's local CA and server certificate (real openssl). */

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe("ensureLocalCertificates", () => {
  it("makes a CA and a localhost server certificate once, keeps no CA key, and reuses them", async () => {
    const home = await mkdtemp(join(tmpdir(), "pgw-localca-"));
    dirs.push(home);
    const first = await ensureLocalCertificates(join(home, "tls"));
    if (isPgwardenError(first)) throw new Error(first.message);
    const ca = new X509Certificate(readFileSync(first.ca));
    const server = new X509Certificate(readFileSync(first.cert));
    expect(ca.ca).toBe(true);
    expect(server.checkIssued(ca)).toBe(true);
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(server.checkHost("localhost")).toBe("localhost");
    expect(server.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(server.checkHost("example.com")).toBeUndefined();
    expect(server.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(statSync(first.key).mode & 0o777).toBe(0o600);
    expect(existsSync(join(home, "tls", "ca.key"))).toBe(false);
    const again = await ensureLocalCertificates(join(home, "tls"));
    if (isPgwardenError(again)) throw new Error(again.message);
    expect(new X509Certificate(readFileSync(again.cert)).fingerprint256).toBe(server.fingerprint256);
  });
});
