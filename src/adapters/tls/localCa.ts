import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type PgwardenError, pgwardenError, SqlState } from "../../errors.ts";

/**
 * The embedded default's own PKI: a local CA and a server certificate for localhost, 127.0.0.1
 * and ::1, made once in the data directory. Node can make keys but not certificates, so the
 * openssl CLI issues them (no dependency added). The CA key is deleted once the certificate is
 * signed: nothing else can then be issued under the CA clients are told to trust.
 */

export interface LocalCertificates {
  /** The CA certificate clients verify pgwarden with (`sslrootcert`). */
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

const files = (dir: string): LocalCertificates => ({
  ca: join(dir, "ca.crt"),
  cert: join(dir, "server.crt"),
  key: join(dir, "server.key"),
});

const openssl = (cwd: string, args: readonly string[]): Promise<string | undefined> =>
  new Promise((resolve) =>
    execFile("openssl", [...args], { cwd, timeout: 30_000 }, (e, _out, err) =>
      resolve(e === null ? undefined : `${(e as NodeJS.ErrnoException).code ?? e.message}: ${err.trim()}`),
    ),
  );

const SERVER_EXTENSIONS = [
  "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
  "basicConstraints=critical,CA:FALSE",
  "keyUsage=critical,digitalSignature",
  "extendedKeyUsage=serverAuth",
].join("\n");

/** ECDSA P-256 keys and SHA-256 signatures: approved in FIPS mode, cheap to handshake. */
const steps = (): string[][] => [
  ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"],
  [
    ...["req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "3650"],
    ...["-subj", "/CN=pgwarden local CA", "-out", "ca.crt"],
    ...["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
  ],
  ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key"],
  ["req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr"],
  [
    ...["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"],
    ...["-sha256", "-days", "825", "-extfile", "server.ext", "-out", "server.crt"],
  ],
];

/**
 * The certificates under `dir` (created on first run). Made in a scratch directory and renamed
 * into place, so an interrupted first run never leaves half a set behind.
 */
export const ensureLocalCertificates = async (dir: string): Promise<LocalCertificates | PgwardenError> => {
  const paths = files(dir);
  if (Object.values(paths).every((p) => existsSync(p))) return paths;
  const parent = join(dir, "..");
  await mkdir(parent, { recursive: true, mode: 0o700 });
  const scratch = await mkdtemp(join(parent, ".tls-"));
  try {
    await writeFile(join(scratch, "server.ext"), SERVER_EXTENSIONS);
    for (const args of steps()) {
      const failed = await openssl(scratch, args);
      if (failed !== undefined)
        return pgwardenError(
          "PGW_TLS_CONFIG",
          SqlState.internalError,
          `cannot create the local TLS certificates with the openssl CLI (${failed}); install openssl or run with --config and your own tls.cert/tls.key`,
        );
    }
    for (const f of ["ca.key", "server.csr", "server.ext", "ca.srl"])
      await rm(join(scratch, f), { force: true });
    await chmod(join(scratch, "server.key"), 0o600);
    await rm(dir, { recursive: true, force: true });
    await rename(scratch, dir);
    return paths;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
};
