import { randomBytes, timingSafeEqual } from "node:crypto";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { clientKeyOf, hmacSha256, saltedPassword, serverKeyOf, sha256, xor } from "./internal/scramCrypto.ts";
import { isValidNonce, parseServerFinal, parseServerFirst } from "./internal/scramMessages.ts";
import { scramPasswordBytes } from "./saslprep.ts";
import {
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  type ScramChannelBinding,
  type ScramMechanism,
} from "./scramServer.ts";

/** Like libpq: 18 random bytes, sent as 24 base64 characters. */
const CLIENT_NONCE_BYTES = 18;

/** Default cap on the server's iteration count: PBKDF2 runs synchronously, on the event loop. */
export const SCRAM_CLIENT_MAX_ITERATIONS = 1_000_000;

export interface ScramClientOptions {
  /**
   * "n" (default): no channel binding. "y": we could bind but the server did not offer -PLUS
   * (what libpq sends over TLS); the server then knows a -PLUS offer was stripped.
   */
  readonly cbindFlag?: "n" | "y";
  /**
   * Bind the exchange to the TLS leg (SCRAM-SHA-256-PLUS): gs2 header `p=tls-server-end-point`
   * and `c=` carries this data. Overrides `cbindFlag`.
   */
  readonly channelBinding?: ScramChannelBinding;
  /** Refuse server-first-messages asking for more PBKDF2 iterations than this. */
  readonly maxIterations?: number;
  /** Fixed client nonce, for test vectors only. */
  readonly nonce?: string;
  /** Username sent in `n=`; PostgreSQL ignores it and libpq sends it empty, so the default is "". */
  readonly username?: string;
}

export interface ScramClient {
  /** The SASL mechanism to name in SASLInitialResponse. */
  readonly mechanism: ScramMechanism;
  /** client-first-message, for SASLInitialResponse. The same text on every call. */
  clientFirst(): string;
  /** Takes server-first-message (AuthenticationSASLContinue), returns client-final-message (SASLResponse). */
  handleServerFirst(message: string, saltedPassword?: Buffer): string | PgwardenError;
  /** Checks server-final-message (AuthenticationSASLFinal): the server proves it knew the verifier. */
  verifyServerFinal(message: string): true | PgwardenError;
}

// Upstream failures end the client's session; the client did nothing wrong, so not 08P01.
const upstreamError = (message: string): PgwardenError =>
  pgwardenError("PGW_UPSTREAM_AUTH", SqlState.connectionFailure, message);

const escapeSaslname = (name: string): string => name.replaceAll("=", "=3D").replaceAll(",", "=2C");

type State =
  | { readonly step: "client-first" | "server-first" }
  | { readonly step: "server-final"; readonly expectedSignature: Buffer }
  | { readonly step: "done" };

/**
 * The client side of SCRAM-SHA-256, for logging in to PostgreSQL upstream. Single use. The
 * password is normalized like libpq does (see `scramPasswordBytes`) and wiped once used.
 *
 * @example
 * const client = createScramClient(password);
 * send(SASLInitialResponse("SCRAM-SHA-256", client.clientFirst()));
 * const clientFinal = client.handleServerFirst(saslContinueData); // PgwardenError on failure
 * const verified = client.verifyServerFinal(saslFinalData);        // true, or PgwardenError
 */
export const createScramClient = (
  password: string | Uint8Array,
  options: ScramClientOptions = {},
): ScramClient => {
  const nonce = options.nonce ?? randomBytes(CLIENT_NONCE_BYTES).toString("base64");
  if (!isValidNonce(nonce)) {
    throw new RangeError("nonce must be 8..1024 printable ASCII characters other than ','");
  }
  const maxIterations = options.maxIterations ?? SCRAM_CLIENT_MAX_ITERATIONS;
  const binding = options.channelBinding;
  const gs2Header = binding === undefined ? `${options.cbindFlag ?? "n"},,` : `p=${binding.type},,`;
  const cbindInput = Buffer.concat([Buffer.from(gs2Header, "utf8"), binding?.data ?? Buffer.alloc(0)]);
  const clientFirstBare = `n=${escapeSaslname(options.username ?? "")},r=${nonce}`;
  let passwordBytes: Buffer | undefined = scramPasswordBytes(password);
  let state: State = { step: "client-first" };

  const fail = (message: string): PgwardenError => {
    state = { step: "done" };
    passwordBytes?.fill(0);
    passwordBytes = undefined;
    return upstreamError(message);
  };

  const clientFirst = (): string => {
    if (state.step === "client-first") state = { step: "server-first" };
    return gs2Header + clientFirstBare;
  };

  const handleServerFirst = (message: string, precomputed?: Buffer): string | PgwardenError => {
    if (state.step !== "server-first" || passwordBytes === undefined) {
      return fail("unexpected SCRAM server-first-message: the client is not waiting for one");
    }
    const parsed = parseServerFirst(message, nonce, maxIterations);
    if (!parsed.ok) return fail(`malformed SCRAM message from upstream: ${parsed.reason}`);
    const { salt, iterations } = parsed.value;
    // A precomputed SaltedPassword (from a cache) is copied: this exchange wipes its own.
    const salted =
      precomputed !== undefined ? Buffer.from(precomputed) : saltedPassword(passwordBytes, salt, iterations);
    passwordBytes.fill(0);
    passwordBytes = undefined;
    const clientKey = clientKeyOf(salted);
    const withoutProof = `c=${cbindInput.toString("base64")},r=${parsed.value.nonce}`;
    const authMessage = `${clientFirstBare},${message},${withoutProof}`;
    const proof = xor(clientKey, hmacSha256(sha256(clientKey), authMessage));
    const expectedSignature = hmacSha256(serverKeyOf(salted), authMessage);
    salted.fill(0);
    clientKey.fill(0);
    state = { step: "server-final", expectedSignature };
    return `${withoutProof},p=${proof.toString("base64")}`;
  };

  const verifyServerFinal = (message: string): true | PgwardenError => {
    if (state.step !== "server-final") {
      return fail("unexpected SCRAM server-final-message: the client is not waiting for one");
    }
    const { expectedSignature } = state;
    const parsed = parseServerFinal(message);
    if (!parsed.ok) return fail(`malformed SCRAM message from upstream: ${parsed.reason}`);
    if (parsed.value.kind === "error") {
      // Keep the server's word but not arbitrary bytes: e= values are meant to be short tokens.
      const value = parsed.value.value.replace(/[^\x20-\x7E]/g, "?").slice(0, 100);
      return fail(`upstream rejected SCRAM authentication: ${value}`);
    }
    if (!timingSafeEqual(parsed.value.signature, expectedSignature)) {
      return fail("upstream SCRAM server signature does not verify: the server does not know the password");
    }
    state = { step: "done" };
    return true;
  };

  return {
    mechanism: binding === undefined ? SCRAM_SHA_256 : SCRAM_SHA_256_PLUS,
    clientFirst,
    handleServerFirst,
    verifyServerFinal,
  };
};

/** libpq's channel_binding setting: disable never binds, prefer binds when offered, require must bind. */
export type ChannelBindingPolicy = "disable" | "prefer" | "require";

/**
 * Picks the mechanism and binding from the server's AuthenticationSASL offer, like libpq: -PLUS
 * when offered and the leg is TLS (binding data known); over TLS without a -PLUS offer the flag is
 * "y" so the server can detect a stripped offer; `require` fails unless the exchange is bound.
 */
export const selectScramOptions = (
  offered: readonly string[],
  binding: ScramChannelBinding | undefined,
  policy: ChannelBindingPolicy = "prefer",
): Pick<ScramClientOptions, "cbindFlag" | "channelBinding"> | PgwardenError => {
  const plusOffered = offered.includes(SCRAM_SHA_256_PLUS);
  if (policy !== "disable" && binding !== undefined && plusOffered) return { channelBinding: binding };
  if (policy === "require") {
    return upstreamError(
      binding === undefined
        ? "channel binding required, but the upstream connection is not TLS"
        : "channel binding required, but upstream did not offer SCRAM-SHA-256-PLUS",
    );
  }
  if (!offered.includes(SCRAM_SHA_256)) {
    return upstreamError(`upstream offers no supported SASL mechanism (${offered.join(", ")})`);
  }
  return { cbindFlag: binding !== undefined && policy !== "disable" ? "y" : "n" };
};
