// Client TLS for the benchmark: one test CA and an ECDSA P-256 server certificate for 127.0.0.1
// (the shared test generator), the cipher policy pinned on every target that terminates TLS, and
// what a target actually negotiates, asked with `openssl s_client -starttls postgres`.

import { execFile } from "node:child_process";
import { chownSync, mkdirSync } from "node:fs";
import { createCa, issue } from "../test/support/pki.ts";

export interface Certificate {
  readonly certFile: string;
  readonly keyFile: string;
  /** The CA that signed it (clients that verify the server trust this). */
  readonly caFile: string;
}

/** What a target says about terminating client TLS: supported, or why not (yet). */
export type ClientTls = { readonly supported: true } | { readonly supported: false; readonly reason: string };

export const TLS_SUPPORTED: ClientTls = { supported: true };

/**
 * One cipher policy for every TLS-terminating target, so the runs compare proxies, not suites:
 * TLS 1.3 only, TLS_AES_256_GCM_SHA384 (the first suite of OpenSSL's default list, and FIPS
 * approved), key exchange on P-256. libpq offers X25519 first, so every handshake on every target
 * takes the same HelloRetryRequest round trip to P-256.
 */
export const PINNED_TLS = {
  version: "TLSv1.3",
  ciphersuite: "TLS_AES_256_GCM_SHA384",
  /** Group name as pgwarden/Node and PostgreSQL spell it, and as OpenSSL prints it. */
  group: "P-256",
  /** The same group by its OpenSSL short name (PgBouncer's client_tls_ecdhcurve). */
  groupSn: "prime256v1",
} as const;

/**
 * Writes a CA and a server certificate for 127.0.0.1 into `dir`. `owner` is the uid/gid of the
 * server processes that read the key (PostgreSQL refuses a key file others can read).
 */
export function makeCertificate(dir: string, owner?: { uid: number; gid: number }): Certificate {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ca = createCa(dir, "bench-ca", { subject: "/CN=pgwarden bench CA", keyType: "p256", days: 2 });
  const server = issue(ca, "server", {
    subject: "/CN=127.0.0.1",
    usage: "server",
    keyType: "p256",
    san: "IP:127.0.0.1,DNS:localhost",
    days: 2,
  });
  if (owner) for (const file of [dir, server.cert, server.key]) chownSync(file, owner.uid, owner.gid);
  return { certFile: server.cert, keyFile: server.key, caFile: ca.cert };
}

/** What one handshake negotiated, as `openssl s_client` reports it. */
export interface Negotiated {
  readonly protocol: string | undefined;
  readonly cipher: string | undefined;
  /** Key-exchange group, e.g. "P-256" ("prime256v1" is reported as P-256). */
  readonly group: string | undefined;
  readonly error?: string;
}

/** OpenSSL's short names of the NIST curves, as TLS and Node name them. */
const OPENSSL_CURVE_NAMES: Readonly<Record<string, string>> = {
  prime256v1: "P-256",
  secp384r1: "P-384",
  secp521r1: "P-521",
};

/** Parses `openssl s_client -brief` output (it writes the summary to stderr). */
export function parseSClient(text: string): Negotiated {
  const field = (name: string) => new RegExp(`^${name}:\\s*(.+)$`, "m").exec(text)?.[1]?.trim();
  // "ECDH, prime256v1, 256 bits" for NIST curves, "X25519, 253 bits" for the others.
  const temp = field("(?:Server|Peer) Temp Key")
    ?.split(",")
    .map((s) => s.trim());
  const curve = temp?.[0] === "ECDH" ? temp[1] : temp?.[0];
  return {
    protocol: field("Protocol version"),
    cipher: field("Ciphersuite"),
    group: curve === undefined ? undefined : (OPENSSL_CURVE_NAMES[curve] ?? curve),
  };
}

/** One handshake against a PostgreSQL-protocol endpoint with OpenSSL's default client offer. */
export function negotiatedBy(host: string, port: number): Promise<Negotiated> {
  return new Promise((resolve) => {
    const child = execFile(
      "openssl",
      ["s_client", "-brief", "-starttls", "postgres", "-connect", `${host}:${port}`],
      { timeout: 10_000 },
      (err, stdout, stderr) => {
        const parsed = parseSClient(`${stdout}\n${stderr}`);
        resolve(
          parsed.cipher === undefined && err ? { ...parsed, error: stderr.trim() || err.message } : parsed,
        );
      },
    );
    // s_client stops at the end of its input: one handshake, nothing sent.
    child.stdin?.end();
  });
}

/** Whether a handshake matched the pinned policy. */
export const matchesPinned = (n: Negotiated): boolean =>
  n.protocol === PINNED_TLS.version && n.cipher === PINNED_TLS.ciphersuite && n.group === PINNED_TLS.group;
