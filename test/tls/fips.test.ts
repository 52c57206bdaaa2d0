import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { clientTlsConfig } from "../../src/adapters/tls/config.ts";
import { cipherPolicyOptions } from "../../src/adapters/tls/policy.ts";
import {
  type FipsStatus,
  formatFipsStatus,
  parseProviders,
  tlsContextProbes,
  tlsPolicyProbes,
} from "../../src/runtime/fips.ts";
import { testCerts } from "../support/certs.ts";
import { CLI } from "../support/cli.ts";
import { sClient } from "./harness.ts";

const repo = resolve(import.meta.dirname, "../..");
const providerDir = process.env.PGWARDEN_FIPS_DIR ?? join(repo, ".cache", "fips");
const certs = testCerts();

/** Environment for a child: with the built provider, or with every OpenSSL setting removed. */
const childEnv = (withProvider: boolean): NodeJS.ProcessEnv => {
  const { OPENSSL_CONF: _c, OPENSSL_MODULES: _m, NODE_OPTIONS: _n, ...rest } = process.env;
  return withProvider
    ? { ...rest, OPENSSL_CONF: join(providerDir, "openssl.cnf"), OPENSSL_MODULES: providerDir }
    : rest;
};

const node = (
  args: readonly string[],
  withProvider: boolean,
): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((done) => {
    execFile(
      process.execPath,
      [...args],
      { env: childEnv(withProvider), cwd: repo, timeout: 60_000, encoding: "utf8" },
      (error, stdout, stderr) =>
        done({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stdout, stderr }),
    );
  });

const cli = [CLI, "fips-status"];

beforeAll(async () => {
  // CI builds it before the tests (.ci/run); locally the script builds it once (about a minute).
  if (existsSync(join(providerDir, "openssl.cnf"))) return;
  const built = await new Promise<{ code: number; out: string }>((done) =>
    execFile(join(repo, "scripts/build-fips-provider.sh"), [providerDir], { timeout: 900_000 }, (e, o, err) =>
      done({ code: e === null ? 0 : 1, out: `${o}${err}` }),
    ),
  );
  if (built.code !== 0) throw new Error(`cannot build the FIPS provider:\n${built.out}`);
}, 900_000);

describe("FIPS mode with the OpenSSL 3 FIPS provider built from source", () => {
  let status: FipsStatus;
  let run: { code: number; stdout: string; stderr: string };

  beforeAll(async () => {
    run = await node(
      ["--enable-fips", ...cli, "--json", "--tls-cert", certs.server.cert, "--tls-key", certs.server.key],
      true,
    );
    status = JSON.parse(run.stdout) as FipsStatus;
  }, 60_000);

  it("fips-status exits 0 and names the FIPS provider and its version", () => {
    expect(run.code, run.stderr).toBe(0);
    expect(status.ok).toBe(true);
    expect(status.fipsMode).toBe(true);
    expect(status.providers).toContainEqual(
      expect.objectContaining({ id: "fips", name: "OpenSSL FIPS Provider", status: "active" }),
    );
    expect(status.providers?.find((p) => p.id === "fips")?.version).toMatch(/^3\.\d+\.\d+$/);
    expect(status.providers?.map((p) => p.id)).not.toContain("default");
  });

  it.each([
    ["sha256", "works"],
    ["hmac-sha256", "works"],
    ["pbkdf2-sha256", "works"],
    ["aes-256-gcm", "works"],
    ["ecdsa-p256", "works"],
    ["md5", "refused"],
    ["chacha20-poly1305", "refused"],
  ])("%s %s", (name, expected) => {
    const probe = status.probes.find((p) => p.name === name);
    expect(probe).toMatchObject({ expect: expected, ok: true });
    if (expected === "refused") expect(probe?.detail).toBe("ERR_OSSL_EVP_UNSUPPORTED");
  });

  it("the client-leg policy negotiates only approved suites and P-256, and refuses X25519-only clients", () => {
    const tlsProbes = status.probes.filter((p) => p.name.startsWith("client-leg TLS"));
    expect(tlsProbes.length).toBe(6);
    expect(tlsProbes.every((p) => p.ok)).toBe(true);
    expect(tlsProbes.find((p) => p.name.includes("TLS 1.3 negotiated group"))?.detail).toBe("prime256v1");
  });

  it("the text report prints provider, version and each result", async () => {
    const text = await node(["--enable-fips", ...cli], true);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^Provider fips: OpenSSL FIPS Provider 3\.\d+\.\d+ \[active\]$/m);
    expect(text.stdout).toContain("pass  md5 refused (ERR_OSSL_EVP_UNSUPPORTED)");
    expect(text.stdout).toContain("Result: all ");
    expect(text.stdout).not.toMatch(/\bvalidated\b(?! claim)/);
  });

  it("crypto.setFips(true) (fips: true without --enable-fips) reaches the same state", async () => {
    const text = await node([...cli], true);
    expect(text.code, text.stdout).toBe(0);
  });
});

describe("a FIPS-mode TLS server (child process) against openssl s_client", () => {
  const servers: ChildProcess[] = [];
  const start = async (policy: "policy" | "node-default"): Promise<number> => {
    const child = spawn(
      process.execPath,
      ["--enable-fips", "test/tls/fixtures/fipsTlsServer.ts", certs.server.cert, certs.server.key, policy],
      { env: childEnv(true), cwd: repo, stdio: ["pipe", "pipe", "pipe"] },
    );
    servers.push(child);
    let out = "";
    child.stderr?.on("data", (d: Buffer) => {
      out += d.toString();
    });
    return new Promise((done, fail) => {
      const timer = setTimeout(() => fail(new Error(`server did not start: ${out}`)), 20_000);
      child.stdout?.on("data", (d: Buffer) => {
        const m = /listening (\d+) fips=1/.exec(d.toString());
        if (m !== null) {
          clearTimeout(timer);
          done(Number(m[1]));
        }
      });
      child.once("exit", () => fail(new Error(`server exited: ${out}`)));
    });
  };
  let policyPort: number;
  let defaultsPort: number;
  beforeAll(async () => {
    [policyPort, defaultsPort] = await Promise.all([start("policy"), start("node-default")]);
  }, 30_000);
  afterAll(() => {
    for (const child of servers) {
      child.stdin?.end();
      child.kill();
    }
  });

  it.each([
    ["TLS 1.3 ChaCha20-only", ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]],
    ["TLS 1.2 ChaCha20-only", ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"]],
  ])("refuses a %s client, with the policy and even with Node's default ciphers", async (_name, args) => {
    for (const port of [policyPort, defaultsPort]) {
      const result = await sClient(port, args);
      expect(result.stdout).not.toContain("ok TLS");
      expect(result.code).not.toBe(0);
    }
  });

  it("accepts an AES-GCM client", async () => {
    const result = await sClient(policyPort, ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]);
    expect(result.stdout).toContain("ok TLSv1.3 TLS_AES_128_GCM_SHA256");
  });

  it("FIPS mode alone still negotiates X25519 with Node's defaults; the policy refuses it", async () => {
    const defaults = await sClient(defaultsPort, ["-tls1_3", "-groups", "X25519"]);
    expect(defaults.stdout).toContain("ok TLSv1.3");
    const policy = await sClient(policyPort, ["-tls1_3", "-groups", "X25519"]);
    expect(policy.stdout).not.toContain("ok TLS");
  });
});

describe("FIPS mode without a provider", () => {
  it("node --enable-fips refuses to start: exit 1 and Node's message", async () => {
    const result = await node(["--enable-fips", ...cli], false);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('--enable-fips requires an active OpenSSL provider named "fips"');
  });

  it("crypto.setFips(true) looks fine (getFips() is 1) but fips-status fails every approved algorithm: exit 1", async () => {
    const result = await node([...cli], false);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain("pass  fips-mode");
    expect(result.stdout).toContain("FAIL  sha256 (ERR_OSSL_EVP_UNSUPPORTED)");
    expect(result.stdout).toContain("FAIL  fips-provider-active (no active provider named fips");
    expect(result.stdout).toMatch(/Result: \d+ of \d+ checks failed: FIPS mode is not in effect/);
    expect(result.stderr).toContain("FIPS self-test failed");
  });
});

describe("FIPS status pieces (in process, no FIPS mode)", () => {
  it("parses openssl list -providers", () => {
    const text = [
      "Providers:",
      "  base",
      "    name: OpenSSL Base Provider",
      "    version: 3.0.19",
      "    status: active",
      "  fips",
      "    name: OpenSSL FIPS Provider",
      "    version: 3.0.20",
      "    status: active",
      "",
    ].join("\n");
    expect(parseProviders(text)).toEqual([
      { id: "base", name: "OpenSSL Base Provider", version: "3.0.19", status: "active" },
      { id: "fips", name: "OpenSSL FIPS Provider", version: "3.0.20", status: "active" },
    ]);
  });

  it("passes the default policy as written", () => {
    expect(tlsPolicyProbes("p", cipherPolicyOptions(clientTlsConfig())).every((p) => p.ok)).toBe(true);
  });

  it.each([
    [
      "an alias cipher list",
      { ciphers: "HIGH", ecdhCurve: "P-256", minVersion: "TLSv1.2" },
      "approved cipher suites only",
    ],
    [
      "ChaCha20",
      { ciphers: "TLS_CHACHA20_POLY1305_SHA256", ecdhCurve: "P-256", minVersion: "TLSv1.2" },
      "approved cipher suites only",
    ],
    [
      "X25519",
      { ciphers: "TLS_AES_128_GCM_SHA256", ecdhCurve: "X25519:P-256", minVersion: "TLSv1.2" },
      "NIST groups only",
    ],
    ["no explicit groups", { ciphers: "TLS_AES_128_GCM_SHA256", minVersion: "TLSv1.2" }, "NIST groups only"],
    [
      "TLS 1.1",
      { ciphers: "TLS_AES_128_GCM_SHA256", ecdhCurve: "P-256", minVersion: "TLSv1.1" },
      "TLS 1.2 minimum",
    ],
  ] as const)("fails a policy with %s", (_name, options, failing) => {
    const probes = tlsPolicyProbes("p", options as tls.SecureContextOptions);
    expect(probes.filter((p) => !p.ok).map((p) => p.name)).toEqual([`p: ${failing}`]);
  });

  it("the handshake probe catches a context that negotiates X25519 (Node's defaults)", async () => {
    const { readFileSync } = await import("node:fs");
    const context = tls.createSecureContext({
      cert: readFileSync(certs.server.cert),
      key: readFileSync(certs.server.key),
    });
    const probes = await tlsContextProbes("defaults", context);
    const group = probes.find((p) => p.name === "defaults: TLS 1.3 negotiated group approved");
    expect(group).toMatchObject({ ok: false, detail: "X25519" });
    expect(probes.find((p) => p.name === "defaults: X25519-only client")?.ok).toBe(false);
  });

  it("formats a failing status without claiming validation", () => {
    const text = formatFipsStatus({
      fipsMode: true,
      nodeOpenssl: "3.5.8",
      opensslConf: undefined,
      opensslModules: undefined,
      providers: undefined,
      probes: [{ name: "sha256", expect: "works", ok: false, detail: "ERR_OSSL_EVP_UNSUPPORTED" }],
      ok: false,
    });
    expect(text).toContain("FAIL  sha256 (ERR_OSSL_EVP_UNSUPPORTED)");
    expect(text).toContain("not a FIPS 140 validation claim");
  });
});
