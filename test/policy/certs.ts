import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { type CertPair, createCa, issue } from "../support/pki.ts";

/** Client certificates for the mapping tests (shared generator), and the peer-certificate shape a real TLS server sees. */

export interface ClientCertSpec {
  /** `-subj` argument, e.g. `/O=Acme/CN=alice`. */
  readonly subject: string;
  /** Lines of an openssl `[alt]` section (`DNS.1 = a`), or none. */
  readonly san?: readonly string[];
  /** Extra sections the SAN lines refer to (dirName). */
  readonly extra?: string;
}

export interface CertFiles {
  readonly dir: string;
  readonly caCert: string;
  readonly caKey: string;
  readonly certs: Readonly<Record<string, { readonly cert: string; readonly key: string }>>;
  readonly cleanup: () => Promise<void>;
}

export const makeCerts = async (specs: Readonly<Record<string, ClientCertSpec>>): Promise<CertFiles> => {
  const dir = await mkdtemp(join(tmpdir(), "pgwarden-policy-certs-"));
  const ca = createCa(dir, "ca", { subject: "/CN=pgwarden test CA", keyType: "p256", days: 2 });
  const certs: Record<string, CertPair> = {};
  for (const [name, spec] of Object.entries(specs)) {
    certs[name] = issue(ca, name, {
      subject: spec.subject,
      usage: "client",
      keyType: "p256",
      days: 2,
      ...(spec.san === undefined ? {} : { san: spec.san }),
      ...(spec.extra === undefined ? {} : { sections: spec.extra }),
    });
  }
  return {
    dir,
    caCert: ca.cert,
    caKey: ca.key,
    certs,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
};

export interface SeenPeer {
  readonly authorized: boolean;
  readonly peer: tls.PeerCertificate;
}

/**
 * Presents each client certificate to a throwaway loopback TLS server that requests and verifies
 * client certificates, and returns what `getPeerCertificate()` gave the server.
 */
export const peerCertificates = async (files: CertFiles): Promise<Record<string, SeenPeer>> => {
  const ca = await readFile(files.caCert);
  // The server's own certificate is a client one re-used: the clients here do not verify it.
  const first = Object.values(files.certs)[0]!;
  const seen: SeenPeer[] = [];
  const server = tls.createServer({
    cert: await readFile(first.cert),
    key: await readFile(first.key),
    ca,
    requestCert: true,
    rejectUnauthorized: true,
  });
  server.on("secureConnection", (s) => {
    seen.push({ authorized: s.authorized, peer: s.getPeerCertificate() });
    s.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  const out: Record<string, SeenPeer> = {};
  try {
    for (const [name, f] of Object.entries(files.certs)) {
      const before = seen.length;
      const [cert, key] = await Promise.all([readFile(f.cert), readFile(f.key)]);
      await new Promise<void>((resolve, reject) => {
        const c = tls.connect({
          host: "127.0.0.1",
          port,
          cert,
          key,
          rejectUnauthorized: false,
        });
        const timer = setTimeout(() => {
          c.destroy();
          reject(new Error(`TLS handshake for ${name} timed out`));
        }, 10_000);
        c.on("error", reject);
        c.on("close", () => {
          clearTimeout(timer);
          resolve();
        });
        c.resume();
      });
      const got = seen[before];
      if (got === undefined) throw new Error(`server saw no connection for ${name}`);
      out[name] = got;
    }
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
  return out;
};
