import { existsSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CertPair, createCa, issue, type LeafSpec, revoke, writeCrl } from "./pki.ts";

export type { CertPair } from "./pki.ts";

/** Paths of the test PKI. Every file is real X.509 made by the openssl CLI. */
export interface TestCerts {
  readonly dir: string;
  /** The test CA that signs everything below except `untrusted`. */
  readonly ca: CertPair;
  /** CN=localhost, SAN DNS:localhost, IP:127.0.0.1; RSA 2048, sha256WithRSAEncryption. */
  readonly server: CertPair;
  /** A second server certificate with the same names and a different key (reload tests). */
  readonly server2: CertPair;
  /** Same names, ECDSA P-256 key, signed with sha384WithRSAEncryption. */
  readonly serverEcdsa: CertPair;
  /** Same names, signed with sha1WithRSAEncryption (channel binding falls back to SHA-256). */
  readonly serverSha1: CertPair;
  /** Same names, signed with RSASSA-PSS over SHA-384 (the hash sits in the algorithm parameters). */
  readonly serverPss: CertPair;
  /** CN=wrong.example, SAN DNS:wrong.example only. */
  readonly wrongHost: CertPair;
  /** CN=alice, SAN email:alice@example.com, DNS:alice.clients.example, URI:spiffe://example.org/alice. */
  readonly client: CertPair;
  /** CN=expired, valid 2020-01-01 .. 2020-12-31. */
  readonly clientExpired: CertPair;
  /** CN=revoked, listed in `crl`. */
  readonly clientRevoked: CertPair;
  /** CRL of the test CA revoking `clientRevoked`. */
  readonly crl: string;
  /** A CA nobody trusts, and CN=mallory signed by it. */
  readonly untrustedCa: CertPair;
  readonly untrusted: CertPair;
}

// Bump when the set of files changes, so a stale cache from an older layout is never reused.
const LAYOUT = 4;

const generate = (dir: string): void => {
  const ca = createCa(dir, "ca", { subject: "/CN=pgwarden test CA" });
  const local = "DNS:localhost,IP:127.0.0.1";
  const server = (name: string, spec: Partial<LeafSpec> = {}) =>
    issue(ca, name, { subject: "/CN=localhost", usage: "server", san: local, ...spec });
  server("server");
  server("server2");
  server("server-ecdsa", { keyType: "p256", digest: "sha384" });
  server("server-sha1", { digest: "sha1" });
  server("server-pss", { digest: "sha384", sigopts: ["rsa_padding_mode:pss", "rsa_pss_saltlen:-1"] });
  server("wrong-host", { subject: "/CN=wrong.example", san: "DNS:wrong.example" });
  issue(ca, "client", {
    subject: "/CN=alice",
    usage: "client",
    san: "email:alice@example.com,DNS:alice.clients.example,URI:spiffe://example.org/alice",
  });
  issue(ca, "client-expired", {
    subject: "/CN=expired",
    usage: "client",
    validity: { notBefore: "20200101000000Z", notAfter: "20201231000000Z" },
  });
  revoke(ca, issue(ca, "client-revoked", { subject: "/CN=revoked", usage: "client" }));
  writeCrl(ca);
  const untrusted = createCa(dir, "untrusted-ca", { subject: "/CN=untrusted CA" });
  issue(untrusted, "untrusted", { subject: "/CN=mallory", usage: "client" });
  writeFileSync(join(dir, "complete"), "");
};

const pathsIn = (dir: string): TestCerts => {
  const pair = (name: string): CertPair => ({
    cert: join(dir, `${name}.crt`),
    key: join(dir, `${name}.key`),
  });
  return {
    dir,
    ca: pair("ca"),
    server: pair("server"),
    server2: pair("server2"),
    serverEcdsa: pair("server-ecdsa"),
    serverSha1: pair("server-sha1"),
    serverPss: pair("server-pss"),
    wrongHost: pair("wrong-host"),
    client: pair("client"),
    clientExpired: pair("client-expired"),
    clientRevoked: pair("client-revoked"),
    crl: join(dir, "ca.crl"),
    untrustedCa: pair("untrusted-ca"),
    untrusted: pair("untrusted"),
  };
};

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let cached: TestCerts | undefined;

/**
 * The test PKI, generated once per test run: vitest's fork workers share a parent process, so the
 * directory is keyed by it; the first worker generates, the others reuse. Directories left by
 * earlier runs (parent gone) are removed.
 */
export const testCerts = (): TestCerts => {
  if (cached !== undefined) return cached;
  const prefix = `pgwarden-certs-v${LAYOUT}-`;
  for (const entry of readdirSync(tmpdir())) {
    // Any layout version: older layouts are never reused either.
    const owner = /^pgwarden-certs-v\d+-(\d+)/.exec(entry)?.[1];
    if (owner !== undefined && !alive(Number(owner))) {
      rmSync(join(tmpdir(), entry), { recursive: true, force: true });
    }
  }
  const final = join(tmpdir(), `${prefix}${process.ppid}`);
  if (!existsSync(join(final, "complete"))) {
    const scratch = mkdtempSync(`${final}.tmp`);
    generate(scratch);
    try {
      renameSync(scratch, final);
    } catch {
      // Another worker won the race; its directory is complete, because it is renamed only when done.
      rmSync(scratch, { recursive: true, force: true });
    }
  }
  cached = pathsIn(final);
  return cached;
};
