// Client-TLS support for the pgbench runs (`--client-tls`): one self-signed certificate for the
// targets that terminate TLS, made with the openssl command line.

import { execFileSync } from "node:child_process";
import { chownSync, mkdirSync } from "node:fs";
import path from "node:path";

export interface Certificate {
  readonly certFile: string;
  readonly keyFile: string;
}

/** What a target says about terminating client TLS: supported, or why not (yet). */
export type ClientTls = { readonly supported: true } | { readonly supported: false; readonly reason: string };

export const TLS_SUPPORTED: ClientTls = { supported: true };

/**
 * Writes a throw-away self-signed certificate for 127.0.0.1 into `dir`. `owner` is the uid/gid
 * of the server process that reads the key (PostgreSQL refuses a key file others can read).
 */
export function makeCertificate(dir: string, owner?: { uid: number; gid: number }): Certificate {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const certFile = path.join(dir, "server.crt");
  const keyFile = path.join(dir, "server.key");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=127.0.0.1",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  if (owner) for (const file of [dir, certFile, keyFile]) chownSync(file, owner.uid, owner.gid);
  return { certFile, keyFile };
}
