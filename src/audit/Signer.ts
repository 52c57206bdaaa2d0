import { createHash, createPrivateKey, createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import { readFile } from "node:fs/promises";
import { type AuditError, auditError } from "./AuditError.ts";
import type { SignatureAlgorithm } from "./AuditEvent.ts";

/**
 * Checkpoint signing. Signatures are ECDSA in IEEE P1363 form (r ‖ s, each padded to the curve
 * size: 64 bytes for ES256, 96 for ES384) — what PKCS#11's CKM_ECDSA returns and JWS uses.
 * ES256 = P-256 with SHA-256, ES384 = P-384 with SHA-384.
 */
export interface Signer {
  readonly algorithm: SignatureAlgorithm;
  /** Fingerprint of the public key (see {@link publicKeyId}). */
  readonly keyId: string;
  /** Signs `data` (the signer hashes it); P1363 signature. */
  readonly sign: (data: Uint8Array) => Promise<Buffer>;
  readonly publicKeyPem: string;
  /** Releases a token session, if any. */
  readonly close?: () => Promise<void>;
}

const CURVES: Record<string, SignatureAlgorithm> = { prime256v1: "ES256", secp384r1: "ES384" };
export const HASH_OF: Record<SignatureAlgorithm, "sha256" | "sha384"> = { ES256: "sha256", ES384: "sha384" };

/** First 128 bits of SHA-256 over the SubjectPublicKeyInfo DER, hex. */
export const publicKeyId = (key: KeyObject): string =>
  createHash("sha256")
    .update(key.export({ type: "spki", format: "der" }))
    .digest("hex")
    .slice(0, 32);

/** The algorithm of an EC public or private key, or an error for any other key. */
export const algorithmOf = (key: KeyObject): SignatureAlgorithm | AuditError => {
  const curve = key.asymmetricKeyType === "ec" ? key.asymmetricKeyDetails?.namedCurve : undefined;
  const alg = curve === undefined ? undefined : CURVES[curve];
  return alg ?? auditError("PGW_AUDIT_SIGNER", "signing key must be ECDSA P-256 or P-384");
};

export interface TrustedKey {
  readonly keyId: string;
  readonly algorithm: SignatureAlgorithm;
  readonly key: KeyObject;
  readonly pem: string;
}

export const trustedKeyFromPem = (pem: string, source: string): TrustedKey | AuditError => {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    return auditError("PGW_AUDIT_SIGNER", `${source}: not a PEM public key`);
  }
  const algorithm = algorithmOf(key);
  if (typeof algorithm !== "string") return auditError("PGW_AUDIT_SIGNER", `${source}: ${algorithm.message}`);
  return {
    keyId: publicKeyId(key),
    algorithm,
    key,
    pem: key.export({ type: "spki", format: "pem" }).toString(),
  };
};

export const verifySignature = (key: TrustedKey, data: Uint8Array, signature: Uint8Array): boolean => {
  try {
    return verify(HASH_OF[key.algorithm], data, { key: key.key, dsaEncoding: "ieee-p1363" }, signature);
  } catch {
    return false;
  }
};

/** A signer over an EC private key in a PEM file (PKCS#8 or SEC1, unencrypted). */
export const loadPemSigner = async (path: string): Promise<Signer | AuditError> => {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    return auditError("PGW_AUDIT_SIGNER", `${path}: ${(e as NodeJS.ErrnoException).code ?? "unreadable"}`);
  }
  try {
    return pemSigner(createPrivateKey(text));
  } catch {
    return auditError("PGW_AUDIT_SIGNER", `${path}: not an unencrypted PEM private key`);
  }
};

export const pemSigner = (key: KeyObject): Signer | AuditError => {
  const algorithm = algorithmOf(key);
  if (typeof algorithm !== "string") return algorithm;
  const pub = createPublicKey(key);
  return {
    algorithm,
    keyId: publicKeyId(pub),
    publicKeyPem: pub.export({ type: "spki", format: "pem" }).toString(),
    sign: async (data) => sign(HASH_OF[algorithm], data, { key, dsaEncoding: "ieee-p1363" }),
  };
};
