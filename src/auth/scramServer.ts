import { randomBytes, timingSafeEqual } from "node:crypto";
import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import { hmacSha256, SCRAM_KEY_LENGTH, sha256, xor } from "./internal/scramCrypto.ts";
import {
  type Gs2Header,
  isValidNonce,
  parseClientFinal,
  parseClientFirst,
} from "./internal/scramMessages.ts";
import { SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LENGTH, type ScramVerifier } from "./scramVerifier.ts";

/** The SASL mechanism name this server implements (no channel binding yet). */
export const SCRAM_SHA_256 = "SCRAM-SHA-256";

/** Like PostgreSQL: 18 random bytes, sent as 24 base64 characters. */
const SERVER_NONCE_BYTES = 18;

/** Why an exchange failed. For the server's own log and audit only: never send it to the client. */
export type ScramFailureReason =
  | "unknown-user"
  | "wrong-proof"
  | "nonce-mismatch"
  | "channel-binding-mismatch"
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
 * The server side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677). Single use: each method
 * is accepted once, in order, and any failure ends the exchange.
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
    if (gs2.cbind.kind === "p") {
      return fail(
        "unsupported",
        protocolError(
          `client requires SCRAM channel binding "${gs2.cbind.name}", but the server offered ${SCRAM_SHA_256} without channel binding`,
        ),
      );
    }
    // "y" (client could bind, thinks we cannot) is fine while -PLUS is not advertised.
    // Once it is, "y" means someone stripped -PLUS from our offer, and must fail.
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
    // Without channel binding, c= must echo the gs2 header exactly ("biws" for "n,,", "eSws" for "y,,").
    const expectedBinding = Buffer.from(gs2.text, "utf8");
    if (!final.channelBinding.equals(expectedBinding)) return authFailed("channel-binding-mismatch");
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
