import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
const openssl = (cwd: string, ...args: string[]) => run("openssl", args, { cwd, timeout: 30_000 });

/** Paths of PEM files made by the real openssl CLI: one CA, a server and a client certificate. */
export interface Pki {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

const newKeyAndCsr = (dir: string, name: string, cn: string) =>
  openssl(
    dir,
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${cn}`,
  );

const sign = async (dir: string, name: string, caName: string, extensions: string) => {
  await writeFile(join(dir, `${name}.ext`), extensions);
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${caName}.pem`,
    "-CAkey",
    `${caName}.key`,
    "-CAcreateserial",
    "-days",
    "2",
    "-out",
    `${name}.pem`,
    "-extfile",
    `${name}.ext`,
  );
};

const makeCa = (dir: string, name: string) =>
  openssl(
    dir,
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  );

/** A CA with a server certificate for localhost/127.0.0.1 and a client certificate, under `dir`. */
export const makePki = async (dir: string, prefix = ""): Promise<Pki> => {
  const ca = `${prefix}ca`;
  await makeCa(dir, ca);
  await newKeyAndCsr(dir, `${prefix}server`, "audit collector");
  await sign(
    dir,
    `${prefix}server`,
    ca,
    "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
  );
  await newKeyAndCsr(dir, `${prefix}client`, "pgwarden audit");
  await sign(dir, `${prefix}client`, ca, "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  const at = (f: string) => join(dir, `${prefix}${f}`);
  return {
    ca: at("ca.pem"),
    serverCert: at("server.pem"),
    serverKey: at("server.key"),
    clientCert: at("client.pem"),
    clientKey: at("client.key"),
  };
};

/** The client side's PEM contents. */
export const clientMaterial = async (pki: Pki) => ({
  ca: await readFile(pki.ca),
  cert: await readFile(pki.clientCert),
  key: await readFile(pki.clientKey),
});
