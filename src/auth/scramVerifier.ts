import { randomBytes } from "node:crypto";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import {
  clientKeyOf,
  decodeBase64,
  SCRAM_KEY_LENGTH,
  saltedPassword,
  serverKeyOf,
  sha256,
} from "./internal/scramCrypto.ts";
import { scramPasswordBytes } from "./saslprep.ts";

/** What the server keeps per user: enough to check a proof, never enough to log in as them. */
export interface ScramVerifier {
  readonly iterations: number;
  readonly salt: Buffer;
  /** H(HMAC(SaltedPassword, "Client Key")) */
  readonly storedKey: Buffer;
  /** HMAC(SaltedPassword, "Server Key") */
  readonly serverKey: Buffer;
}

/** PostgreSQL's default `scram_iterations`. */
export const SCRAM_DEFAULT_ITERATIONS = 4096;
/** PostgreSQL's salt length for generated verifiers. */
export const SCRAM_DEFAULT_SALT_LENGTH = 16;
/** PostgreSQL stores iteration counts as a C int. */
export const SCRAM_MAX_ITERATIONS = 2 ** 31 - 1;

const PREFIX = "SCRAM-SHA-256$";

/**
 * Derives a verifier from a password (normalized like PostgreSQL, see `scramPasswordBytes`).
 * Throws RangeError on an invalid iteration count or an empty salt: those are caller bugs.
 *
 * @example deriveScramVerifier("pencil", { iterations: 4096, salt }).storedKey.length === 32
 */
export const deriveScramVerifier = (
  password: string | Uint8Array,
  options: { readonly iterations?: number; readonly salt?: Buffer } = {},
): ScramVerifier => {
  const iterations = options.iterations ?? SCRAM_DEFAULT_ITERATIONS;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > SCRAM_MAX_ITERATIONS) {
    throw new RangeError(`SCRAM iteration count must be an integer in 1..${SCRAM_MAX_ITERATIONS}`);
  }
  const salt = options.salt ?? randomBytes(SCRAM_DEFAULT_SALT_LENGTH);
  if (salt.length === 0) throw new RangeError("SCRAM salt must not be empty");
  const salted = saltedPassword(scramPasswordBytes(password), salt, iterations);
  const verifier = {
    iterations,
    salt: Buffer.from(salt),
    storedKey: sha256(clientKeyOf(salted)),
    serverKey: serverKeyOf(salted),
  };
  salted.fill(0);
  return verifier;
};

/** PostgreSQL's stored form: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. */
export const formatScramVerifier = (v: ScramVerifier): string =>
  `${PREFIX}${v.iterations}:${v.salt.toString("base64")}$${v.storedKey.toString("base64")}:${v.serverKey.toString("base64")}`;

/**
 * A new verifier in PostgreSQL's stored form, with a random 16-byte salt and 4096 iterations
 * unless given. The same text `ALTER ROLE … PASSWORD '…'` accepts and `pg_authid` holds.
 *
 * @example createScramVerifier("secret") // "SCRAM-SHA-256$4096:…$…:…"
 */
export const createScramVerifier = (
  password: string | Uint8Array,
  options?: { readonly iterations?: number; readonly salt?: Buffer },
): string => formatScramVerifier(deriveScramVerifier(password, options));

// The text is a secret: errors say what is wrong, never echo it.
const invalid = (why: string): PgwardenError =>
  pgwardenError("PGW_CONFIG", SqlState.internalError, `invalid SCRAM-SHA-256 verifier: ${why}`);

const ITERATIONS = /^[1-9][0-9]{0,9}$/;

/**
 * Parses PostgreSQL's stored form. Strict: canonical base64, 32-byte keys, a decimal iteration
 * count without sign or leading zeros.
 *
 * @example parseScramVerifier(createScramVerifier("pw")) // { iterations: 4096, salt, storedKey, serverKey }
 */
export const parseScramVerifier = (text: string): ScramVerifier | PgwardenError => {
  if (!text.startsWith(PREFIX)) return invalid(`does not start with "${PREFIX}"`);
  const parts = text.slice(PREFIX.length).split("$");
  if (parts.length !== 2) return invalid("expected <iterations>:<salt>$<StoredKey>:<ServerKey>");
  const [params = "", keys = ""] = parts;
  const paramParts = params.split(":");
  const keyParts = keys.split(":");
  if (paramParts.length !== 2 || keyParts.length !== 2) {
    return invalid("expected <iterations>:<salt>$<StoredKey>:<ServerKey>");
  }
  const [iterText = "", saltText = ""] = paramParts;
  const [storedText = "", serverText = ""] = keyParts;
  const iterations = ITERATIONS.test(iterText) ? Number(iterText) : Number.NaN;
  if (!(iterations <= SCRAM_MAX_ITERATIONS)) return invalid("iteration count is not an integer in range");
  const salt = decodeBase64(saltText);
  if (salt === undefined || salt.length === 0) return invalid("salt is not non-empty base64");
  const storedKey = decodeBase64(storedText);
  if (storedKey?.length !== SCRAM_KEY_LENGTH) return invalid("StoredKey is not 32 bytes of base64");
  const serverKey = decodeBase64(serverText);
  if (serverKey?.length !== SCRAM_KEY_LENGTH) return invalid("ServerKey is not 32 bytes of base64");
  return { iterations, salt, storedKey, serverKey };
};
