import { randomBytes, timingSafeEqual } from "node:crypto";
import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import { TLS_SERVER_END_POINT } from "./channelBinding.ts";
import { hmacSha256, SCRAM_KEY_LENGTH, sha256, xor } from "./internal/scramCrypto.ts";
import {
  type Gs2Header,
  isValidNonce,
  parseClientFinal,
  parseClientFirst,
} from "./internal/scramMessages.ts";
import { SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LENGTH, type ScramVerifier } from "./scramVerifier.ts";

/** The SASL mechanism names this server implements. */
export const SCRAM_SHA_256 = "SCRAM-SHA-256";
export const SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS";
export type ScramMechanism = typeof SCRAM_SHA_256 | typeof SCRAM_SHA_256_PLUS;

/** What AuthenticationSASL offers: -PLUS first (as PostgreSQL does) exactly when the leg is TLS. */
export const scramMechanisms = (channelBinding: ScramChannelBinding | undefined): ScramMechanism[] =>
  channelBinding === undefined ? [SCRAM_SHA_256] : [SCRAM_SHA_256_PLUS, SCRAM_SHA_256];

/** Channel binding of the leg the exchange runs on (RFC 5929 tls-server-end-point data). */
export interface ScramChannelBinding {
  readonly type: typeof TLS_SERVER_END_POINT;
  readonly data: Buffer;
}

/** Like PostgreSQL: 18 random bytes, sent as 24 base64 characters. */
const SERVER_NONCE_BYTES = 18;

/** Why an exchange failed. For the server's own log and audit only: never send it to the client. */
export type ScramFailureReason =
  | "unknown-user"
  | "wrong-proof"
  | "nonce-mismatch"
  | "channel-binding-mismatch"
  | "channel-binding-downgrade"
  | "malformed"
  | "unsupported"
  | "out-of-order";

export interface ScramServerOptions {
  /** The user named in the startup message; the SCRAM `n=` attribute is ignored, as PostgreSQL does. */
  readonly user: string;
  /**
   * Keys the salt shown for unknown users. Use at least 32 random bytes that stay the same across
   * restarts: a salt that changes on restart would set unknown users apart from real ones.
   */
  readonly mockSecret: Buffer;
  /** Iteration count shown for unknown users; default 4096, so match the real verifiers' count. */
  readonly mockIterations?: number;
  /** Fixed server nonce part, for test vectors only. */
  readonly serverNonce?: string;
  /**
   * Set when the leg is TLS: the offer included SCRAM-SHA-256-PLUS (`scramMechanisms`), and a
   * client answering "y" is then a downgrade. Leave undefined on plaintext legs.
   */
  readonly channelBinding?: ScramChannelBinding;
  /** The mechanism the client chose in SASLInitialResponse; default SCRAM-SHA-256. */
  readonly mechanism?: ScramMechanism;
}

export interface ScramServer {
  /** Takes client-first-message, returns server-first-message. */
  handleClientFirst(message: string): string | PgwardenError;
  /** Takes client-final-message; on a valid proof returns server-final-message (`v=…`). */
  handleClientFinal(message: string): { readonly serverFinal: string } | PgwardenError;
  /** Why the exchange failed, if it did. */
  failureReason(): ScramFailureReason | undefined;
}

type State =
  | { readonly step: "client-first" }
  | {
      readonly step: "client-final";
      readonly gs2: Gs2Header;
      readonly clientFirstBare: string;
      readonly serverFirst: string;
      readonly nonce: string;
    }
  | { readonly step: "done" };

/**
 * The server side of one SCRAM-SHA-256 or SCRAM-SHA-256-PLUS exchange (RFC 5802, RFC 7677,
 * RFC 5929). Single use: each method is accepted once, in order, and any failure ends the exchange.
 *
 * With `verifier` undefined (unknown user) the exchange runs against a mock verifier whose salt is
 * HMAC-SHA-256(mockSecret, user) truncated to 16 bytes, and fails at the end with the same error
 * a wrong password gets.
 *
 * @example
 * const server = createScramServer(verifier, { user: "alice", mockSecret });
 * const serverFirst = server.handleClientFirst(clientFirst); // send in AuthenticationSASLContinue
 * const final = server.handleClientFinal(clientFinal);       // send final.serverFinal in AuthenticationSASLFinal
 */
export const createScramServer = (
  verifier: ScramVerifier | undefined,
  options: ScramServerOptions,
): ScramServer => {
  const { user } = options;
  if (options.serverNonce !== undefined && !isValidNonce(options.serverNonce)) {
    throw new RangeError("serverNonce must be 8..1024 printable ASCII characters other than ','");
  }
  const mechanism = options.mechanism ?? SCRAM_SHA_256;
  const binding = options.channelBinding;
  if (mechanism === SCRAM_SHA_256_PLUS && binding === undefined) {
    throw new RangeError("SCRAM-SHA-256-PLUS needs channelBinding: it is only offered on TLS legs");
  }
  const known = verifier !== undefined;
  const keys: ScramVerifier = verifier ?? {
    iterations: options.mockIterations ?? SCRAM_DEFAULT_ITERATIONS,
    salt: hmacSha256(options.mockSecret, user).subarray(0, SCRAM_DEFAULT_SALT_LENGTH),
    // Random keys: the proof check still runs (same work as a real user) and cannot pass.
    storedKey: randomBytes(SCRAM_KEY_LENGTH),
    serverKey: randomBytes(SCRAM_KEY_LENGTH),
  };
  let state: State = { step: "client-first" };
  let reason: ScramFailureReason | undefined;

  const fail = (why: ScramFailureReason, error: PgwardenError): PgwardenError => {
    state = { step: "done" };
    reason ??= why;
    return error;
  };
  // For the log, an unknown user outranks whatever else went wrong.
  const authFailed = (why: ScramFailureReason): PgwardenError =>
    fail(
      known ? why : "unknown-user",
      pgwardenError(
        "PGW_AUTH_FAILED",
        SqlState.invalidPassword,
        `password authentication failed for user "${user}"`,
      ),
    );
  const outOfOrder = (expected: string): PgwardenError =>
    fail("out-of-order", protocolError(`unexpected SCRAM message: expected ${expected}`));

  const handleClientFirst = (message: string): string | PgwardenError => {
    if (state.step !== "client-first") {
      return outOfOrder(state.step === "done" ? "none" : "client-final-message");
    }
    const parsed = parseClientFirst(message);
    if (!parsed.ok) return fail("malformed", protocolError(`malformed SCRAM message: ${parsed.reason}`));
    const { gs2, clientNonce, bare } = parsed.value;
    const refused = checkCbindFlag(gs2, mechanism, binding);
    if (refused !== undefined) return fail(refused.reason, refused.error);
    if (gs2.authzid !== undefined) {
      return fail(
        "unsupported",
        pgwardenError(
          "PGW_AUTH_UNSUPPORTED",
          SqlState.featureNotSupported,
          "SCRAM authorization identity (a=) is not supported",
        ),
      );
    }
    const nonce = clientNonce + (options.serverNonce ?? randomBytes(SERVER_NONCE_BYTES).toString("base64"));
    const serverFirst = `r=${nonce},s=${keys.salt.toString("base64")},i=${keys.iterations}`;
    state = { step: "client-final", gs2, clientFirstBare: bare, serverFirst, nonce };
    return serverFirst;
  };

  const handleClientFinal = (message: string): { readonly serverFinal: string } | PgwardenError => {
    if (state.step !== "client-final") {
      return outOfOrder(state.step === "done" ? "none" : "client-first-message");
    }
    const { gs2, clientFirstBare, serverFirst, nonce } = state;
    const parsed = parseClientFinal(message);
    if (!parsed.ok) return fail("malformed", protocolError(`malformed SCRAM message: ${parsed.reason}`));
    const final = parsed.value;
    // c= is the gs2 header ("biws" for "n,,", "eSws" for "y,,"), followed by the binding data for "p".
    const header = Buffer.from(gs2.text, "utf8");
    const expectedBinding =
      gs2.cbind.kind === "p" && binding !== undefined ? Buffer.concat([header, binding.data]) : header;
    const bindingMatches =
      final.channelBinding.length === expectedBinding.length &&
      timingSafeEqual(final.channelBinding, expectedBinding);
    if (!bindingMatches) return authFailed("channel-binding-mismatch");
    if (final.nonce !== nonce) return authFailed("nonce-mismatch");
    const authMessage = `${clientFirstBare},${serverFirst},${final.withoutProof}`;
    const clientKey = xor(final.proof, hmacSha256(keys.storedKey, authMessage));
    const proofMatches = timingSafeEqual(sha256(clientKey), keys.storedKey);
    if (!known || !proofMatches) return authFailed("wrong-proof");
    state = { step: "done" };
    return { serverFinal: `v=${hmacSha256(keys.serverKey, authMessage).toString("base64")}` };
  };

  return { handleClientFirst, handleClientFinal, failureReason: () => reason };
};

/**
 * The gs2 channel-binding flag against the offer and the chosen mechanism (RFC 5802 §6):
 * -PLUS needs "p=tls-server-end-point"; plain SCRAM takes "n", or "y" only when -PLUS was not
 * offered, since "y" after a -PLUS offer means someone removed -PLUS on the way (a downgrade).
 */
const checkCbindFlag = (
  gs2: Gs2Header,
  mechanism: ScramMechanism,
  binding: ScramChannelBinding | undefined,
): { readonly reason: ScramFailureReason; readonly error: PgwardenError } | undefined => {
  const { cbind } = gs2;
  if (mechanism === SCRAM_SHA_256_PLUS) {
    if (cbind.kind !== "p") {
      return {
        reason: "malformed",
        error: protocolError(
          `malformed SCRAM message: the client selected ${SCRAM_SHA_256_PLUS}, but the SCRAM message does not include channel binding data`,
        ),
      };
    }
    if (cbind.name !== TLS_SERVER_END_POINT) {
      return {
        reason: "unsupported",
        error: protocolError(`unsupported SCRAM channel-binding type "${cbind.name}"`),
      };
    }
    return undefined;
  }
  if (cbind.kind === "p") {
    return {
      reason: "unsupported",
      error: protocolError(
        `client requires SCRAM channel binding "${cbind.name}", but selected ${SCRAM_SHA_256} without channel binding`,
      ),
    };
  }
  if (cbind.kind === "y" && binding !== undefined) {
    return {
      reason: "channel-binding-downgrade",
      error: protocolError(
        "SCRAM channel binding negotiation error: the client supports channel binding and thinks the server does not, but this server offered it",
      ),
    };
  }
  return undefined;
};
