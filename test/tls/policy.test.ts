import { readFileSync } from "node:fs";
import * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ClientTlsConfig, clientTlsConfig, upstreamTlsConfig } from "../../src/adapters/tls/config.ts";
import {
  buildSecureContext,
  clientLegContextOptions,
  upstreamLegContextOptions,
} from "../../src/adapters/tls/policy.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { testCerts } from "../support/certs.ts";
import { sClient, startTlsTestServer, type TlsTestServer } from "./harness.ts";

const certs = testCerts();

const contextFor = (config: Partial<ClientTlsConfig>): tls.SecureContext => {
  const options = clientLegContextOptions(
    clientTlsConfig({ mode: "require", cert: certs.server.cert, key: certs.server.key, ...config }),
  );
  if (isPgwardenError(options)) throw new Error(options.message);
  const ctx = buildSecureContext(options);
  if (isPgwardenError(ctx)) throw new Error(ctx.message);
  return ctx;
};

/** The client is willing to go as low as it can, so a refusal is the server's policy. */
const WEAK_CLIENT = ["-cipher", "ALL:@SECLEVEL=0"];
const established = (out: string) => /^ok TLSv1(\.\d)? /m.test(out);

describe("client-leg cipher policy (openssl s_client against the default policy)", () => {
  let strict: TlsTestServer;
  // Same certificate, Node's defaults plus old versions: shows each refused client could connect.
  let permissive: TlsTestServer;

  beforeAll(async () => {
    const ctx = contextFor({});
    strict = await startTlsTestServer(() => ctx);
    const loose = tls.createSecureContext({
      cert: readFileSync(certs.server.cert),
      key: readFileSync(certs.server.key),
      minVersion: "TLSv1",
      ciphers: "ALL:@SECLEVEL=0",
    });
    permissive = await startTlsTestServer(() => loose);
  });
  afterAll(async () => {
    await strict?.close();
    await permissive?.close();
  });

  it.each([
    ["TLS 1.0", ["-tls1", ...WEAK_CLIENT]],
    ["TLS 1.1", ["-tls1_1", ...WEAK_CLIENT]],
    ["TLS 1.3 ChaCha20 only", ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]],
    ["TLS 1.2 ChaCha20 only", ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"]],
    ["TLS 1.2 CBC only", ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"]],
    ["TLS 1.2 static RSA only", ["-tls1_2", "-cipher", "AES128-GCM-SHA256"]],
    ["TLS 1.3 X25519 only", ["-tls1_3", "-groups", "X25519"]],
    ["TLS 1.2 X25519 only", ["-tls1_2", "-groups", "X25519"]],
  ])("refuses %s, which a permissive server accepts", async (_name, args) => {
    const refused = await sClient(strict.port, args);
    expect(established(refused.stdout)).toBe(false);
    expect(refused.code).not.toBe(0);
    const control = await sClient(permissive.port, args);
    expect(established(control.stdout), control.stderr).toBe(true);
  });

  it.each([
    ["TLS 1.3 AES-256-GCM", ["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"], "TLS_AES_256_GCM_SHA384"],
    ["TLS 1.3 AES-128-GCM", ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], "TLS_AES_128_GCM_SHA256"],
    [
      "TLS 1.2 ECDHE-RSA-AES256-GCM",
      ["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"],
      "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ],
    [
      "TLS 1.2 ECDHE-RSA-AES128-GCM on P-384",
      ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-groups", "P-384"],
      "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ],
  ])("accepts %s", async (_name, args, suite) => {
    const result = await sClient(strict.port, [...args, "-CAfile", certs.ca.cert, "-verify_return_error"]);
    expect(result.stdout).toContain(`ok TLSv1.`);
    expect(result.stdout).toContain(` ${suite} `);
  });

  it("prefers TLS 1.3 with AES-256-GCM when the client offers everything", async () => {
    const result = await sClient(strict.port, []);
    expect(result.stdout).toMatch(/^ok TLSv1\.3 TLS_AES_256_GCM_SHA384 /m);
  });

  it("negotiates P-256 by default, not X25519", async () => {
    const result = await sClient(strict.port, ["-tls1_3"]);
    expect(result.stdout).toMatch(
      /Server Temp Key: ECDH, prime256v1, 256 bits|Negotiated TLS1\.3 group: secp256r1/,
    );
  });

  it("serves ECDHE-ECDSA suites with an ECDSA certificate", async () => {
    const ctx = contextFor({ cert: certs.serverEcdsa.cert, key: certs.serverEcdsa.key });
    const server = await startTlsTestServer(() => ctx);
    try {
      const result = await sClient(server.port, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]);
      expect(result.stdout).toContain(" TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 ");
    } finally {
      await server.close();
    }
  });

  it("honours a configured TLS 1.3 minimum", async () => {
    const ctx = contextFor({ minVersion: "TLSv1.3" });
    const server = await startTlsTestServer(() => ctx);
    try {
      expect(established((await sClient(server.port, ["-tls1_2"])).stdout)).toBe(false);
      expect(established((await sClient(server.port, ["-tls1_3"])).stdout)).toBe(true);
    } finally {
      await server.close();
    }
  });
});

describe("policy options", () => {
  it("builds exactly the approved defaults", () => {
    const options = clientLegContextOptions(
      clientTlsConfig({ mode: "require", cert: certs.server.cert, key: certs.server.key }),
    );
    expect(isPgwardenError(options)).toBe(false);
    expect(options).toMatchObject({
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.3",
      ecdhCurve: "P-256:P-384",
      honorCipherOrder: true,
      ciphers:
        "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
    });
    expect(options).not.toHaveProperty("ca");
  });

  it("adds the client CA and CRL when clientCa is set", () => {
    const options = clientLegContextOptions(
      clientTlsConfig({
        cert: certs.server.cert,
        key: certs.server.key,
        clientCa: certs.ca.cert,
        clientCrl: certs.crl,
      }),
    );
    expect(options).toHaveProperty("ca");
    expect(options).toHaveProperty("crl");
  });

  it.each([
    ["no certificate", { key: certs.server.key }, "tls.cert and tls.key are required"],
    [
      "CRL without CA",
      { cert: certs.server.cert, key: certs.server.key, clientCrl: certs.crl },
      "needs tls.clientCa",
    ],
    [
      "missing file",
      { cert: "/nonexistent/server.crt", key: certs.server.key },
      "tls.cert: cannot read /nonexistent/server.crt: ENOENT",
    ],
  ])("refuses %s with PGW_TLS_CONFIG", (_name, config, message) => {
    const options = clientLegContextOptions(clientTlsConfig(config));
    expect(isPgwardenError(options) && options.code).toBe("PGW_TLS_CONFIG");
    expect(isPgwardenError(options) && options.message).toContain(message);
  });

  it("refuses a key that does not match the certificate, without showing key material", () => {
    const options = clientLegContextOptions(
      clientTlsConfig({ cert: certs.server.cert, key: certs.server2.key }),
    );
    if (isPgwardenError(options)) throw new Error(options.message);
    const ctx = buildSecureContext(options);
    expect(isPgwardenError(ctx) && ctx.code).toBe("PGW_TLS_CONFIG");
    expect(isPgwardenError(ctx) && ctx.message).not.toContain("PRIVATE KEY");
  });

  it("refuses an unknown cipher suite name", () => {
    const options = clientLegContextOptions(
      clientTlsConfig({ cert: certs.server.cert, key: certs.server.key, ciphersuites: "TLS_NOPE" }),
    );
    if (isPgwardenError(options)) throw new Error(options.message);
    expect(isPgwardenError(buildSecureContext(options))).toBe(true);
  });

  it("upstream: cert and key go together", () => {
    const options = upstreamLegContextOptions(
      upstreamTlsConfig({ mode: "verify-full", cert: certs.client.cert }),
    );
    expect(isPgwardenError(options) && options.code).toBe("PGW_TLS_CONFIG");
  });
});
