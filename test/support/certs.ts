import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One certificate and its private key, both PEM files. */
export interface CertPair {
  readonly cert: string;
  readonly key: string;
}

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
const LAYOUT = 3;

const openssl = (cwd: string, args: readonly string[]): void => {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
};

const caConfig = (dir: string): string => `
[ca]
default_ca = test_ca
[test_ca]
dir = ${dir}/ca-db
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = ${dir}/ca.crt
private_key = ${dir}/ca.key
default_md = sha256
default_crl_days = 3650
policy = anything
copy_extensions = copy
unique_subject = no
[anything]
commonName = supplied
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
`;

const generate = (dir: string): void => {
  const run = (...args: string[]) => openssl(dir, args);
  const key = (name: string, kind: "rsa" | "ec" = "rsa") =>
    kind === "rsa"
      ? run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", `${name}.key`)
      : run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`);
  const selfSignedCa = (name: string, cn: string) => {
    key(name);
    run(
      ...["req", "-x509", "-new", "-key", `${name}.key`, "-sha256", "-days", "3650", "-subj", `/CN=${cn}`],
      ...["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
      ...["-out", `${name}.crt`],
    );
  };
  const serverExt = (names: string) =>
    [
      `subjectAltName=${names}`,
      "basicConstraints=CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth",
    ].join("\n");
  const serverCert = (
    name: string,
    cn: string,
    names: string,
    md = "sha256",
    kind: "rsa" | "ec" = "rsa",
    sigopts: string[] = [],
  ) => {
    key(name, kind);
    writeFileSync(join(dir, `${name}.ext`), serverExt(names));
    run("req", "-new", "-key", `${name}.key`, "-subj", `/CN=${cn}`, "-out", `${name}.csr`);
    run(
      ...["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"],
      ...[`-${md}`, ...sigopts, "-days", "3650", "-extfile", `${name}.ext`, "-out", `${name}.crt`],
    );
  };

  selfSignedCa("ca", "pgwarden test CA");
  const localNames = "DNS:localhost,IP:127.0.0.1";
  serverCert("server", "localhost", localNames);
  serverCert("server2", "localhost", localNames);
  serverCert("server-ecdsa", "localhost", localNames, "sha384", "ec");
  serverCert("server-sha1", "localhost", localNames, "sha1");
  serverCert("server-pss", "localhost", localNames, "sha384", "rsa", [
    ...["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"],
  ]);
  serverCert("wrong-host", "wrong.example", "DNS:wrong.example");

  // Client certificates go through `openssl ca`: it can backdate validity and revoke.
  mkdirSync(join(dir, "ca-db", "new"), { recursive: true });
  writeFileSync(join(dir, "ca-db", "index.txt"), "");
  writeFileSync(join(dir, "ca-db", "serial"), "1000\n");
  writeFileSync(join(dir, "ca-db", "crlnumber"), "1000\n");
  writeFileSync(join(dir, "ca.cnf"), caConfig(dir));
  const clientCert = (name: string, cn: string, extra: string[] = [], san?: string) => {
    key(name);
    const subj = ["-subj", `/CN=${cn}`];
    const sanArgs = san === undefined ? [] : ["-addext", `subjectAltName=${san}`];
    run("req", "-new", "-key", `${name}.key`, ...subj, ...sanArgs, "-out", `${name}.csr`);
    run(
      ...["ca", "-batch", "-config", "ca.cnf", "-extensions", "client_ext", "-notext"],
      ...["-in", `${name}.csr`, "-out", `${name}.crt`, ...extra],
    );
  };
  clientCert(
    "client",
    "alice",
    ["-days", "3650"],
    "email:alice@example.com,DNS:alice.clients.example,URI:spiffe://example.org/alice",
  );
  clientCert("client-expired", "expired", ["-startdate", "20200101000000Z", "-enddate", "20201231000000Z"]);
  clientCert("client-revoked", "revoked", ["-days", "3650"]);
  run("ca", "-config", "ca.cnf", "-revoke", "client-revoked.crt", "-crl_reason", "keyCompromise");
  run("ca", "-config", "ca.cnf", "-gencrl", "-out", "ca.crl");

  selfSignedCa("untrusted-ca", "untrusted CA");
  key("untrusted");
  run("req", "-new", "-key", "untrusted.key", "-subj", "/CN=mallory", "-out", "untrusted.csr");
  run(
    ...["x509", "-req", "-in", "untrusted.csr", "-CA", "untrusted-ca.crt", "-CAkey", "untrusted-ca.key"],
    ...["-CAcreateserial", "-sha256", "-days", "3650", "-out", "untrusted.crt"],
  );
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
