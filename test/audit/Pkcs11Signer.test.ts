import { execFileSync } from "node:child_process";
import { createPublicKey, verify } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isAuditError } from "../../src/audit/AuditError.ts";
import {
  generatePkcs11EcKey,
  openPkcs11Signer,
  type Pkcs11SignerConfig,
} from "../../src/audit/Pkcs11Signer.ts";
import { publicKeyId, trustedKeyFromPem } from "../../src/audit/Signer.ts";

// Debian's softhsm2 package (.ci/run installs it).
const MODULE = "/usr/lib/softhsm/libsofthsm2.so";
const PIN = "271828";

describe("PKCS#11 signer on SoftHSM2", () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  const config = (keyLabel: string): Pkcs11SignerConfig => ({
    module: MODULE,
    tokenLabel: "pgwarden-audit",
    pinEnv: "PGW_TEST_PIN",
    keyLabel,
  });

  beforeAll(async () => {
    expect(existsSync(MODULE), `${MODULE} (Debian package softhsm2)`).toBe(true);
    dir = await mkdtemp(join(tmpdir(), "pgw-softhsm-"));
    await writeFile(
      join(dir, "softhsm2.conf"),
      `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\n`,
    );
    // SoftHSM reads its configuration when the module initializes, in this process.
    process.env.SOFTHSM2_CONF = join(dir, "softhsm2.conf");
    env = { ...process.env, PGW_TEST_PIN: PIN };
    execFileSync(
      "softhsm2-util",
      ["--init-token", "--free", "--label", "pgwarden-audit", "--so-pin", "314159", "--pin", PIN],
      { env, stdio: "pipe", timeout: 20_000 },
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each(["ES256", "ES384"] as const)(
    "signs with a %s key generated on the token; node:crypto verifies",
    async (alg) => {
      const label = `audit-${alg}`;
      const keyId = await generatePkcs11EcKey(config(label), alg, env);
      expect(isAuditError(keyId) ? keyId.message : keyId).toMatch(/^[0-9a-f]{32}$/);
      const signer = await openPkcs11Signer(config(label), env);
      if (isAuditError(signer)) throw new Error(signer.message);
      try {
        expect(signer.algorithm).toBe(alg);
        expect(signer.keyId).toBe(keyId);
        expect(publicKeyId(createPublicKey(signer.publicKeyPem))).toBe(keyId);
        const data = Buffer.from(`{"kind":"checkpoint","segment":1}`);
        const sig = await signer.sign(data);
        expect(sig.length).toBe(alg === "ES256" ? 64 : 96);
        const hash = alg === "ES256" ? "sha256" : "sha384";
        const pub = createPublicKey(signer.publicKeyPem);
        expect(verify(hash, data, { key: pub, dsaEncoding: "ieee-p1363" }, sig)).toBe(true);
        expect(verify(hash, Buffer.from("other"), { key: pub, dsaEncoding: "ieee-p1363" }, sig)).toBe(false);
        expect(isAuditError(trustedKeyFromPem(signer.publicKeyPem, "token"))).toBe(false);
      } finally {
        await signer.close?.();
      }
    },
  );

  it("names a wrong PIN and a missing key without echoing the PIN", async () => {
    const bad = await openPkcs11Signer(config("audit-ES256"), { PGW_TEST_PIN: "999999" });
    expect(isAuditError(bad) && bad.message).toContain("login failed");
    expect(JSON.stringify(bad)).not.toContain("999999");
    const missing = await openPkcs11Signer(config("no-such-key"), env);
    expect(isAuditError(missing) && missing.message).toContain("no-such-key");
  });
});
