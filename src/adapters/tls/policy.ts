import { readFileSync } from "node:fs";
import * as tls from "node:tls";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../../errors.ts";
import type { ClientTlsConfig, UpstreamTlsConfig } from "./config.ts";

/**
 * The cipher policy of both legs as `tls.SecureContextOptions`: TLS 1.2 minimum, 1.3 preferred,
 * the configured suites and groups (FIPS-approved by default), server cipher order. Reads the
 * PEM files named by the configuration; everything else is pure.
 */

export const tlsConfigError = (message: string): PgwardenError =>
  pgwardenError("PGW_TLS_CONFIG", SqlState.internalError, message);

/** Reads a PEM file; the error names the setting and the path, never the contents. */
const readPem = (setting: string, path: string): Buffer | PgwardenError => {
  try {
    return readFileSync(path);
  } catch (e) {
    return tlsConfigError(`${setting}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
  }
};

export interface CipherPolicy {
  readonly minVersion: tls.SecureVersion;
  readonly ciphers: string;
  readonly ciphersuites: string;
  readonly groups: string;
}

/**
 * Versions, suites and groups alone (no certificates). Node takes TLS 1.3 suites and TLS 1.2
 * ciphers in one `ciphers` string; the `TLS_` names are the 1.3 ones.
 */
export const cipherPolicyOptions = (p: CipherPolicy): tls.SecureContextOptions => ({
  minVersion: p.minVersion,
  maxVersion: "TLSv1.3",
  ciphers: [p.ciphersuites, p.ciphers].filter((s) => s !== "").join(":"),
  ecdhCurve: p.groups,
  honorCipherOrder: true,
});

type Files = Record<string, string | undefined>;

/** Reads every named file, or returns the first error. */
const readAll = (files: Files): Record<string, Buffer> | PgwardenError => {
  const out: Record<string, Buffer> = {};
  for (const [setting, path] of Object.entries(files)) {
    if (path === undefined) continue;
    const pem = readPem(setting, path);
    if (!Buffer.isBuffer(pem)) return pem;
    out[setting] = pem;
  }
  return out;
};

/** Whether the client leg asks clients for a certificate. */
export const requestsClientCertificate = (config: ClientTlsConfig): boolean => config.clientCa !== undefined;

/**
 * Options for the client leg, where pgwarden is the TLS server. With `clientCa` the CA bundle
 * (and `clientCrl`) verify client certificates; Node then checks the CRL for every certificate.
 */
export const clientLegContextOptions = (
  config: ClientTlsConfig,
): tls.SecureContextOptions | PgwardenError => {
  if (config.cert === undefined || config.key === undefined) {
    return tlsConfigError("tls.cert and tls.key are required when tls.mode is not disable");
  }
  if (config.clientCrl !== undefined && config.clientCa === undefined) {
    return tlsConfigError("tls.clientCrl needs tls.clientCa");
  }
  const pem = readAll({
    "tls.cert": config.cert,
    "tls.key": config.key,
    "tls.clientCa": config.clientCa,
    "tls.clientCrl": config.clientCrl,
  });
  if (isPgwardenError(pem)) return pem;
  return {
    ...cipherPolicyOptions(config),
    cert: pem["tls.cert"],
    key: pem["tls.key"],
    ...(pem["tls.clientCa"] === undefined ? {} : { ca: pem["tls.clientCa"] }),
    ...(pem["tls.clientCrl"] === undefined ? {} : { crl: pem["tls.clientCrl"] }),
  };
};

/**
 * Options for the upstream leg, where pgwarden is the TLS client. `ca` pins the trust anchors
 * (Node's built-in roots otherwise); `cert`/`key` is the client certificate for PostgreSQL.
 */
export const upstreamLegContextOptions = (
  config: UpstreamTlsConfig,
): tls.SecureContextOptions | PgwardenError => {
  if ((config.cert === undefined) !== (config.key === undefined)) {
    return tlsConfigError("upstream.tls.cert and upstream.tls.key go together");
  }
  const pem = readAll({
    "upstream.tls.ca": config.ca,
    "upstream.tls.cert": config.cert,
    "upstream.tls.key": config.key,
  });
  if (isPgwardenError(pem)) return pem;
  return {
    ...cipherPolicyOptions(config),
    ...(pem["upstream.tls.ca"] === undefined ? {} : { ca: pem["upstream.tls.ca"] }),
    ...(pem["upstream.tls.cert"] === undefined ? {} : { cert: pem["upstream.tls.cert"] }),
    ...(pem["upstream.tls.key"] === undefined ? {} : { key: pem["upstream.tls.key"] }),
  };
};

/** `tls.createSecureContext` as a value: bad PEM, a key that does not match, or an unknown suite. */
export const buildSecureContext = (options: tls.SecureContextOptions): tls.SecureContext | PgwardenError => {
  try {
    return tls.createSecureContext(options);
  } catch (e) {
    const error = e as { code?: string; message?: string };
    return tlsConfigError(`cannot build the TLS context: ${error.code ?? error.message ?? "error"}`);
  }
};
