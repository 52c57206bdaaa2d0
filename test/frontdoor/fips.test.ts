import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { connectUpstream, UpstreamCredentials } from "../../src/adapters/upstream.ts";
import { deriveScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { testCerts } from "../support/certs.ts";
import { CLI } from "../support/cli.ts";
import { writeServeFiles } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { TEST_PASSWORD } from "../support/proxy.ts";
import { sClient } from "../tls/harness.ts";
import { psql } from "./support.ts";

/**
 * `fips: true` / `--fips` at start, with the OpenSSL 3 FIPS provider built from source (the
 * set-up of test/tls/fips.test.ts builds it into .cache/fips): pgwarden starts only when the
 * self-test passes with its TLS contexts, and md5 is refused upstream.
 */

const repo = resolve(import.meta.dirname, "../..");
const providerDir = process.env.PGWARDEN_FIPS_DIR ?? join(repo, ".cache", "fips");

beforeAll(async () => {
  // CI builds it before the tests (.ci/run); otherwise the same script builds it once.
  if (existsSync(join(providerDir, "openssl.cnf"))) return;
  const code = await new Promise<number>((done) =>
    execFile(join(repo, "scripts/build-fips-provider.sh"), [providerDir], { timeout: 900_000 }, (e) =>
      done(e === null ? 0 : 1),
    ),
  );
  if (code !== 0) throw new Error("cannot build the FIPS provider (scripts/build-fips-provider.sh)");
}, 900_000);
const certs = testCerts();

let child: ChildProcess | undefined;
afterEach(() => {
  if (child !== undefined && child.exitCode === null) child.kill("SIGKILL");
  child = undefined;
});

/** `pgwarden serve --config F [--fips]` as a child; resolves once it listens or exits. */
const serve = async (
  config: Record<string, unknown>,
  withProvider: boolean,
  flags: string[] = ["--fips"],
) => {
  const port = await freePort();
  const pg = postgresInfo();
  const files = await writeServeFiles(
    {
      listen: { host: "127.0.0.1", port },
      upstream: { host: pg.host, port: pg.port, user: "pgw_app", password: pg.rolePassword },
      access: { grants: [{ identity: "*", databases: ["*"] }] },
      tls: { mode: "require", cert: certs.server.cert, key: certs.server.key },
      log: { level: "info" },
      ...config,
    },
    [["postgres", deriveScramVerifier(TEST_PASSWORD, { salt: Buffer.alloc(16, 7) })]],
  );
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, LANG: "C.UTF-8" };
  if (withProvider)
    Object.assign(env, { OPENSSL_CONF: join(providerDir, "openssl.cnf"), OPENSSL_MODULES: providerDir });
  const c = spawn(process.execPath, [CLI, "serve", "--config", files.config, ...flags], {
    cwd: repo,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  child = c;
  const out = { stdout: "", stderr: "" };
  c.stdout!.setEncoding("utf8").on("data", (d: string) => {
    out.stdout += d;
  });
  c.stderr!.setEncoding("utf8").on("data", (d: string) => {
    out.stderr += d;
  });
  const exited = new Promise<number | null>((r) => c.on("exit", (code) => r(code)));
  const deadline = Date.now() + 30_000;
  while (!out.stdout.includes("listening") && c.exitCode === null && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  return { port, out, exited, listening: out.stdout.includes("listening") };
};

describe("fips: true with the built FIPS provider", () => {
  it("--fips starts after the self-test, logs the provider and each result, and serves TLS", async () => {
    const s = await serve({}, true);
    expect(s.listening).toBe(true);
    const line = s.out.stderr.split("\n").find((l) => l.includes("FIPS mode on"));
    expect(line).toBeDefined();
    const logged = JSON.parse(line!) as { provider: string; version: string; probes: string[] };
    expect(logged.provider).toMatch(/FIPS/i);
    expect(logged.version).toMatch(/^3\./);
    expect(logged.probes.length).toBeGreaterThan(8);
    expect(logged.probes.every((p) => p.startsWith("pass"))).toBe(true);
    const r = await psql(s.port, `sslmode=verify-full sslrootcert=${certs.ca.cert}`, "select 'fips ok'");
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("fips ok");
    const chacha = await sClient(s.port, ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]);
    expect(chacha.stdout).not.toMatch(/Cipher is TLS_CHACHA20/);
  }, 60_000);

  it("refuses to start when the configured TLS policy is not approved (ChaCha20 in the suites)", async () => {
    const s = await serve(
      {
        tls: {
          mode: "require",
          cert: certs.server.cert,
          key: certs.server.key,
          ciphersuites: "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
        },
      },
      true,
    );
    expect(s.listening).toBe(false);
    expect(await s.exited).toBe(1);
    expect(s.out.stderr).toContain("FIPS mode requested, but the self-test failed");
    expect(s.out.stderr).toMatch(/FAIL/);
  }, 60_000);
});

describe("fips: true without a FIPS provider", () => {
  it("refuses to start: exit 1 and a message saying the self-test failed", async () => {
    const s = await serve({ fips: true }, false, []);
    expect(s.listening).toBe(false);
    expect(await s.exited).toBe(1);
    expect(s.out.stderr).toContain("FIPS mode requested, but the self-test failed");
    expect(s.out.stderr).toContain("fips-provider-active");
  }, 60_000);
});

describe("md5 in FIPS mode", () => {
  it("PostgreSQL asking for md5 is refused when refuseMd5 is set, before any hash is computed", async () => {
    // A server that answers every startup packet with AuthenticationMD5Password.
    const server = createServer((s) => {
      s.on("error", () => {});
      s.once("data", () => s.write(Buffer.from([0x52, 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4])));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    try {
      const login = (refuseMd5: boolean) =>
        connectUpstream({
          host: "127.0.0.1",
          port,
          connectTimeoutMs: 1000,
          refuseMd5,
          parameters: new Map([["user", "app"]]),
          credentials: new UpstreamCredentials("secret"),
        });
      const refused = await login(true);
      expect(isPgwardenError(refused) && refused.message).toBe(
        'PostgreSQL asked for md5 authentication for role "app", refused in FIPS mode',
      );
      // Control: without FIPS mode the md5 answer is sent (and the fake server then says nothing).
      const sent = await login(false);
      expect(isPgwardenError(sent) && sent.message).toMatch(/timed out|closed/);
    } finally {
      server.close();
    }
  });
});
