import { createHash, X509Certificate } from "node:crypto";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { DER_OID, DER_SEQUENCE, decodeOid, derChildren, readDer } from "./internal/der.ts";

/** The only channel-binding type PostgreSQL implements. */
export const TLS_SERVER_END_POINT = "tls-server-end-point";

type Hash = "sha224" | "sha256" | "sha384" | "sha512";

/** Signature algorithm OID → its hash, with MD5 and SHA-1 already upgraded to SHA-256 (RFC 5929 §4.1). */
const SIGNATURE_HASH: Readonly<Record<string, Hash>> = {
  "1.2.840.113549.1.1.4": "sha256", // md5WithRSAEncryption
  "1.2.840.113549.1.1.5": "sha256", // sha1WithRSAEncryption
  "1.2.840.113549.1.1.14": "sha224",
  "1.2.840.113549.1.1.11": "sha256",
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
  "1.2.840.10045.4.1": "sha256", // ecdsa-with-SHA1
  "1.2.840.10045.4.3.1": "sha224",
  "1.2.840.10045.4.3.2": "sha256",
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.2.840.10040.4.3": "sha256", // dsa-with-sha1
  "2.16.840.1.101.3.4.3.1": "sha224",
  "2.16.840.1.101.3.4.3.2": "sha256",
};

/** Digest OIDs inside RSASSA-PSS parameters (SHA-1 upgraded as above). */
const DIGEST_HASH: Readonly<Record<string, Hash>> = {
  "1.3.14.3.2.26": "sha256",
  "2.16.840.1.101.3.4.2.4": "sha224",
  "2.16.840.1.101.3.4.2.1": "sha256",
  "2.16.840.1.101.3.4.2.2": "sha384",
  "2.16.840.1.101.3.4.2.3": "sha512",
};

const RSASSA_PSS = "1.2.840.113549.1.1.10";

const bindingError = (message: string): PgwardenError =>
  pgwardenError("PGW_AUTH_UNSUPPORTED", SqlState.featureNotSupported, message);

/**
 * RSASSA-PSS names its hash in the parameters: SEQUENCE { [0] hashAlgorithm DEFAULT sha1, … }.
 * Reads the certificate's outer signatureAlgorithm (not the TBS copy: they must match anyway).
 */
const pssHash = (der: Buffer): Hash | undefined => {
  const cert = readDer(der);
  const parts = cert?.tag === DER_SEQUENCE ? derChildren(cert.contents) : undefined;
  const algorithm = parts?.[1]?.tag === DER_SEQUENCE ? derChildren(parts[1].contents) : undefined;
  const params = algorithm?.[1];
  if (params === undefined || params.tag !== DER_SEQUENCE) return undefined;
  const fields = derChildren(params.contents);
  if (fields === undefined) return undefined;
  const explicitHash = fields.find((f) => f.tag === 0xa0);
  if (explicitHash === undefined) return "sha256"; // default SHA-1, upgraded
  const inner = readDer(explicitHash.contents);
  const digest = inner?.tag === DER_SEQUENCE ? derChildren(inner.contents)?.[0] : undefined;
  const oid = digest?.tag === DER_OID ? decodeOid(digest.contents) : undefined;
  return oid === undefined ? undefined : DIGEST_HASH[oid];
};

/** The hash tls-server-end-point uses for this certificate, or why there is none (e.g. Ed25519). */
export const endPointHash = (der: Buffer): Hash | PgwardenError => {
  let oid: string;
  try {
    oid = new X509Certificate(der).signatureAlgorithmOid;
  } catch {
    return bindingError("channel binding: the server certificate cannot be parsed");
  }
  const hash = oid === RSASSA_PSS ? pssHash(der) : SIGNATURE_HASH[oid];
  return (
    hash ??
    bindingError(`channel binding: no tls-server-end-point hash for certificate signature algorithm ${oid}`)
  );
};

/**
 * RFC 5929 tls-server-end-point channel-binding data: the hash of the server's DER certificate,
 * using its signature's hash (SHA-256 for MD5 and SHA-1). Both sides compute it from the same
 * certificate: pgwarden's own on the client leg, PostgreSQL's on the upstream leg.
 */
export const tlsServerEndPoint = (der: Buffer): Buffer | PgwardenError => {
  const hash = endPointHash(der);
  return typeof hash === "string" ? createHash(hash).update(der).digest() : hash;
};
