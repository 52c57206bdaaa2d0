import { createHash, createPublicKey } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as graphene from "graphene-pk11";
import { type AuditError, auditError, isAuditError } from "./AuditError.ts";
import type { SignatureAlgorithm } from "./AuditEvent.ts";
import { HASH_OF, publicKeyId, type Signer } from "./Signer.ts";

/**
 * Checkpoint signing with a key that never leaves a PKCS#11 token (an HSM; SoftHSM2 in tests).
 * The token signs the SHA-256/384 digest with CKM_ECDSA, whose output is already r ‖ s.
 */
export interface Pkcs11SignerConfig {
  /** Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly module: string;
  /** The token, by label (preferred: slot numbers can change) or by slot index. */
  readonly tokenLabel?: string;
  readonly slot?: number;
  /** The user PIN: from a file (first line) or an environment variable. */
  readonly pinFile?: string;
  readonly pinEnv?: string;
  /** CKA_LABEL of the key pair. */
  readonly keyLabel: string;
}

const CURVES: Record<SignatureAlgorithm, { name: string; jwk: string; size: number }> = {
  ES256: { name: "secp256r1", jwk: "P-256", size: 32 },
  ES384: { name: "secp384r1", jwk: "P-384", size: 48 },
};

const signerError = (message: string): AuditError => auditError("PGW_AUDIT_SIGNER", `PKCS#11: ${message}`);

const readPin = async (c: Pkcs11SignerConfig, env: NodeJS.ProcessEnv): Promise<string | AuditError> => {
  if (c.pinFile !== undefined) {
    try {
      return (await readFile(c.pinFile, "utf8")).split(/\r?\n/)[0]!;
    } catch (e) {
      return signerError(`PIN file ${c.pinFile}: ${(e as NodeJS.ErrnoException).code ?? "unreadable"}`);
    }
  }
  const pin = c.pinEnv === undefined ? undefined : env[c.pinEnv];
  return pin ?? signerError(`no PIN: set pinFile or the variable named by pinEnv`);
};

interface OpenSession {
  readonly module: graphene.Module;
  readonly session: graphene.Session;
  readonly close: () => void;
}

const openSession = async (
  c: Pkcs11SignerConfig,
  rw: boolean,
  env: NodeJS.ProcessEnv,
): Promise<OpenSession | AuditError> => {
  const pin = await readPin(c, env);
  if (isAuditError(pin)) return pin;
  let module: graphene.Module;
  try {
    module = graphene.Module.load(c.module, "pkcs11");
    module.initialize();
  } catch (e) {
    return signerError(`cannot load ${c.module}: ${(e as Error).message}`);
  }
  try {
    const slots = module.getSlots(true);
    let slot: graphene.Slot | undefined;
    for (let i = 0; i < slots.length; i++) {
      const s = slots.items(i);
      if (c.tokenLabel !== undefined ? s.getToken().label.trim() === c.tokenLabel : i === (c.slot ?? 0))
        slot = s;
    }
    if (slot === undefined) throw new Error(`no token ${c.tokenLabel ?? `in slot ${c.slot ?? 0}`}`);
    const flags = graphene.SessionFlag.SERIAL_SESSION | (rw ? graphene.SessionFlag.RW_SESSION : 0);
    const session = slot.open(flags);
    try {
      session.login(pin, graphene.UserType.USER);
    } catch {
      session.close();
      // The token's message may echo the cause; the PIN itself is never in it, but stay terse.
      throw new Error("login failed (wrong PIN or locked token)");
    }
    return {
      module,
      session,
      close: () => {
        try {
          session.logout();
          session.close();
        } finally {
          module.finalize();
        }
      },
    };
  } catch (e) {
    module.finalize();
    return signerError((e as Error).message);
  }
};

/** The EC public key of a token object as a Node KeyObject, and its algorithm. */
const exportPublicKey = (pub: graphene.SessionObject) => {
  // CKA_EC_PARAMS and CKA_ECDSA_PARAMS are one attribute; graphene may name it either way.
  const attrs = pub.getAttribute({ pointEC: null, paramsEC: null }) as {
    pointEC?: Buffer;
    paramsEC?: Buffer;
    paramsECDSA?: Buffer;
  };
  const pointEC = attrs.pointEC;
  const paramsEC = attrs.paramsEC ?? attrs.paramsECDSA;
  if (pointEC === undefined || paramsEC === undefined)
    throw new Error("public key lacks CKA_EC_POINT or CKA_EC_PARAMS");
  const alg = (Object.keys(CURVES) as SignatureAlgorithm[]).find((a) =>
    graphene.NamedCurve.getByName(CURVES[a].name).value.equals(paramsEC),
  );
  if (alg === undefined) throw new Error("key is not on P-256 or P-384");
  const size = CURVES[alg].size;
  // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point; some tokens omit the wrapper.
  const point = pointEC.length === 2 * size + 3 && pointEC[0] === 0x04 ? pointEC.subarray(2) : pointEC;
  if (point.length !== 2 * size + 1 || point[0] !== 0x04) throw new Error("unexpected EC point encoding");
  const key = createPublicKey({
    key: {
      kty: "EC",
      crv: CURVES[alg].jwk,
      x: point.subarray(1, 1 + size).toString("base64url"),
      y: point.subarray(1 + size).toString("base64url"),
    },
    format: "jwk",
  });
  return { alg, key };
};

/** Opens a signer over the token key pair labelled `keyLabel`. Call `close` when done. */
export const openPkcs11Signer = async (
  c: Pkcs11SignerConfig,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Signer | AuditError> => {
  const s = await openSession(c, false, env);
  if (isAuditError(s)) return s;
  try {
    const find = (cls: graphene.ObjectClass) => s.session.find({ class: cls, label: c.keyLabel });
    const privs = find(graphene.ObjectClass.PRIVATE_KEY);
    const pubs = find(graphene.ObjectClass.PUBLIC_KEY);
    if (privs.length !== 1 || pubs.length !== 1)
      throw new Error(
        `expected one key pair labelled ${c.keyLabel}, found ${privs.length} private and ${pubs.length} public`,
      );
    const priv = privs.items(0).toType<graphene.PrivateKey>();
    const { alg, key } = exportPublicKey(pubs.items(0));
    const hash = HASH_OF[alg];
    return {
      algorithm: alg,
      keyId: publicKeyId(key),
      publicKeyPem: key.export({ type: "spki", format: "pem" }).toString(),
      sign: (data) =>
        new Promise<Buffer>((resolve, reject) => {
          const digest = createHash(hash).update(data).digest();
          s.session.createSign("ECDSA", priv).once(digest, (err, sig) => (err ? reject(err) : resolve(sig)));
        }),
      close: async () => s.close(),
    };
  } catch (e) {
    s.close();
    return signerError((e as Error).message);
  }
};

/**
 * Generates a non-extractable EC key pair on the token (provisioning and tests); returns the
 * public key's id.
 */
export const generatePkcs11EcKey = async (
  c: Pkcs11SignerConfig,
  algorithm: SignatureAlgorithm,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string | AuditError> => {
  const s = await openSession(c, true, env);
  if (isAuditError(s)) return s;
  try {
    const id = Buffer.from(c.keyLabel);
    const kp = s.session.generateKeyPair(
      graphene.KeyGenMechanism.EC,
      {
        keyType: graphene.KeyType.EC,
        token: true,
        verify: true,
        label: c.keyLabel,
        id,
        paramsEC: graphene.NamedCurve.getByName(CURVES[algorithm].name).value,
      },
      {
        keyType: graphene.KeyType.EC,
        token: true,
        private: true,
        sensitive: true,
        extractable: false,
        sign: true,
        label: c.keyLabel,
        id,
      },
    );
    return publicKeyId(exportPublicKey(kp.publicKey).key);
  } catch (e) {
    return signerError((e as Error).message);
  } finally {
    s.close();
  }
};
