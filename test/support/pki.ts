// The one certificate generator of the tests and the benchmark: CAs, server and client
// certificates, back-dated and revoked ones and CRLs, all made by the real openssl command line.
// It imports nothing from src/, so bench/ can use it too.

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** A certificate and its private key, both PEM files. */
export interface CertPair {
  readonly cert: string;
  readonly key: string;
}

/** A CA that can issue, revoke and publish a CRL: its files live in `dir`. */
export interface Authority extends CertPair {
  readonly dir: string;
  readonly name: string;
}

/** RSA 2048 or ECDSA over NIST P-256. */
export type KeyType = "rsa" | "p256";

export interface CaSpec {
  /** `-subj` argument, e.g. `/CN=test CA`. */
  readonly subject: string;
  readonly keyType?: KeyType;
  readonly days?: number;
}

export interface LeafSpec {
  /** `-subj` argument (UTF-8), e.g. `/O=Acme/CN=alice`; kept as given, several CNs included. */
  readonly subject: string;
  readonly usage: "server" | "client";
  readonly keyType?: KeyType;
  /** subjectAltName: `DNS:a,IP:127.0.0.1` on one line, or `[alt]` section lines (`DNS.1 = a`). */
  readonly san?: string | readonly string[];
  /** Further config sections the `[alt]` lines refer to (dirName). */
  readonly sections?: string;
  /** Signature digest (default sha256). */
  readonly digest?: "sha1" | "sha256" | "sha384";
  /** `-sigopt` values, e.g. RSASSA-PSS padding. */
  readonly sigopts?: readonly string[];
  /** Validity from now (default 3650 days); ignored when `validity` is set. */
  readonly days?: number;
  /** A fixed window, `YYYYMMDDHHMMSSZ`: certificates that expired (or are not valid yet). */
  readonly validity?: { readonly notBefore: string; readonly notAfter: string };
}

const openssl = (cwd: string, args: readonly string[]): void => {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"], timeout: 30_000 });
};

const keyArgs = (type: KeyType): string[] =>
  type === "rsa"
    ? ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    : ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

const newKey = (dir: string, file: string, type: KeyType): void =>
  openssl(dir, ["genpkey", ...keyArgs(type), "-out", file]);

// `openssl ca` keeps a database so it can back-date and revoke; -preserveDN keeps subjects as given.
const caConfig = (ca: string): string => `[ca]
default_ca = this_ca
[this_ca]
dir = ./${ca}-db
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = ./${ca}.crt
private_key = ./${ca}.key
default_md = sha256
default_crl_days = 3650
policy = anything
unique_subject = no
[anything]
commonName = optional
`;

/** A self-signed CA named `name` in `dir` (files `name.crt`, `name.key`, `name.cnf`, `name-db/`). */
export const createCa = (dir: string, name: string, spec: CaSpec): Authority => {
  mkdirSync(join(dir, `${name}-db`, "new"), { recursive: true });
  writeFileSync(join(dir, `${name}-db`, "index.txt"), "");
  writeFileSync(join(dir, `${name}-db`, "serial"), "1000\n");
  writeFileSync(join(dir, `${name}-db`, "crlnumber"), "1000\n");
  writeFileSync(join(dir, `${name}.cnf`), caConfig(name));
  newKey(dir, `${name}.key`, spec.keyType ?? "rsa");
  openssl(dir, [
    ...["req", "-x509", "-new", "-utf8", "-key", `${name}.key`, "-sha256", "-subj", spec.subject],
    ...["-days", String(spec.days ?? 3650)],
    ...["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ...["-out", `${name}.crt`],
  ]);
  return { dir, name, cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
};

const extensions = (spec: LeafSpec): string => {
  const lines = [
    "basicConstraints = CA:FALSE",
    "keyUsage = critical, digitalSignature, keyEncipherment",
    `extendedKeyUsage = ${spec.usage === "server" ? "serverAuth" : "clientAuth"}`,
  ];
  if (typeof spec.san === "string") lines.push(`subjectAltName = ${spec.san}`);
  else if (spec.san !== undefined) lines.push("subjectAltName = @alt", "[alt]", ...spec.san);
  if (spec.sections !== undefined) lines.push(spec.sections);
  return `${lines.join("\n")}\n`;
};

/** A key and a certificate `name.crt`/`name.key` signed by `ca`, in the CA's directory. */
export const issue = (ca: Authority, name: string, spec: LeafSpec): CertPair => {
  const dir = ca.dir;
  newKey(dir, `${name}.key`, spec.keyType ?? "rsa");
  openssl(dir, ["req", "-new", "-utf8", "-key", `${name}.key`, "-subj", spec.subject, "-out", `${name}.csr`]);
  writeFileSync(join(dir, `${name}.ext`), extensions(spec));
  const validity =
    spec.validity === undefined
      ? ["-days", String(spec.days ?? 3650)]
      : ["-startdate", spec.validity.notBefore, "-enddate", spec.validity.notAfter];
  openssl(dir, [
    ...["ca", "-batch", "-notext", "-preserveDN", "-config", `${ca.name}.cnf`],
    ...["-md", spec.digest ?? "sha256", ...(spec.sigopts ?? []).flatMap((o) => ["-sigopt", o])],
    ...["-extfile", `${name}.ext`, ...validity, "-in", `${name}.csr`, "-out", `${name}.crt`],
  ]);
  return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
};

/** Marks `leaf` revoked (key compromise) in the CA's database; `writeCrl` then publishes it. */
export const revoke = (ca: Authority, leaf: CertPair): void =>
  openssl(ca.dir, ["ca", "-config", `${ca.name}.cnf`, "-revoke", leaf.cert, "-crl_reason", "keyCompromise"]);

/** The CA's CRL as `name.crl`; returns its path. */
export const writeCrl = (ca: Authority): string => {
  openssl(ca.dir, ["ca", "-config", `${ca.name}.cnf`, "-gencrl", "-out", `${ca.name}.crl`]);
  return join(ca.dir, `${ca.name}.crl`);
};
