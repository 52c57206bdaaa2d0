import { readFile } from "node:fs/promises";
import { createCa, issue } from "../../support/pki.ts";

/** Paths of PEM files made by the real openssl CLI: one CA, a server and a client certificate. */
export interface Pki {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

/** A CA with a server certificate for localhost/127.0.0.1 and a client certificate, under `dir`. */
export const makePki = async (dir: string, prefix = ""): Promise<Pki> => {
  const short = { keyType: "p256", days: 2 } as const;
  const ca = createCa(dir, `${prefix}ca`, { subject: `/CN=${prefix}ca`, ...short });
  const server = issue(ca, `${prefix}server`, {
    subject: "/CN=audit collector",
    usage: "server",
    san: "DNS:localhost,IP:127.0.0.1",
    ...short,
  });
  const client = issue(ca, `${prefix}client`, { subject: "/CN=pgwarden audit", usage: "client", ...short });
  return {
    ca: ca.cert,
    serverCert: server.cert,
    serverKey: server.key,
    clientCert: client.cert,
    clientKey: client.key,
  };
};

/** The client side's PEM contents. */
export const clientMaterial = async (pki: Pki) => ({
  ca: await readFile(pki.ca),
  cert: await readFile(pki.clientCert),
  key: await readFile(pki.clientKey),
});
