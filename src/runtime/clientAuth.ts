import type { MessageStream } from "../adapters/MessageStream.ts";
import { createScramServer } from "../auth/scramServer.ts";
import type { ScramVerifier } from "../auth/scramVerifier.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { encodeAuthentication } from "../protocol/backend.ts";
import { decodeSASLInitialResponse, decodeSASLResponse } from "../protocol/frontend.ts";

/** How the client's side of authentication ended; the session turns it into events and replies. */
export type AuthOutcome =
  | { readonly kind: "ok" }
  /** The client went away; nothing is left to say. */
  | { readonly kind: "closed" }
  | { readonly kind: "failed" | "timeout" | "violation"; readonly error: PgwardenError };

export interface ClientAuthContext {
  readonly method: "trust" | "scram-sha-256";
  readonly timeoutMs: number;
  readonly user: string;
  /** Undefined for an unknown user: the exchange then runs against a mock verifier. */
  readonly verifier: ScramVerifier | undefined;
  readonly mockSecret: Buffer;
  readonly send: (message: Buffer) => void;
  /** Puts a client message to the connection machine; undefined if legal, else the violation. */
  readonly check: (message: Buffer) => PgwardenError | undefined;
}

const failed = (sqlstate: string, message: string): AuthOutcome => ({
  kind: "failed",
  error: pgwardenError("PGW_AUTH_FAILED", sqlstate as SqlState, message),
});

/** The next authentication message, or the outcome that ends the exchange. */
const next = async (stream: MessageStream, ctx: ClientAuthContext): Promise<Buffer | AuthOutcome> => {
  const msg = await stream.nextWithin(ctx.timeoutMs, "the client's authentication response");
  if (msg === "closed") return { kind: "closed" };
  if (isPgwardenError(msg)) {
    return msg.code === "PGW_AUTH_TIMEOUT"
      ? {
          kind: "timeout",
          error: pgwardenError("PGW_AUTH_TIMEOUT", SqlState.connectionFailure, "authentication timed out"),
        }
      : { kind: "violation", error: msg };
  }
  const illegal = ctx.check(msg);
  return illegal === undefined ? msg : { kind: "violation", error: illegal };
};

/**
 * pgwarden's side of client authentication: SCRAM-SHA-256 against the users file, or trust.
 * Wrong passwords and unknown users end alike: 28P01 naming the user.
 */
export const authenticateClient = async (
  stream: MessageStream,
  ctx: ClientAuthContext,
): Promise<AuthOutcome> => {
  if (ctx.method === "trust") return { kind: "ok" };
  const scram = createScramServer(ctx.verifier, { mockSecret: ctx.mockSecret, user: ctx.user });
  ctx.send(encodeAuthentication({ kind: "SASL", mechanisms: ["SCRAM-SHA-256"] }));

  const first = await next(stream, ctx);
  if (!Buffer.isBuffer(first)) return first;
  const init = decodeSASLInitialResponse(first);
  if (isPgwardenError(init)) return { kind: "violation", error: init };
  if (init.mechanism !== "SCRAM-SHA-256" || init.data === null) {
    return failed(SqlState.protocolViolation, "client selected an invalid SASL authentication mechanism");
  }
  const serverFirst = scram.handleClientFirst(init.data.toString("utf8"));
  if (isPgwardenError(serverFirst)) return failed(serverFirst.sqlstate, serverFirst.message);
  ctx.send(encodeAuthentication({ kind: "SASLContinue", data: Buffer.from(serverFirst) }));

  const final = await next(stream, ctx);
  if (!Buffer.isBuffer(final)) return final;
  const outcome = scram.handleClientFinal(decodeSASLResponse(final).toString("utf8"));
  if (isPgwardenError(outcome)) {
    if (outcome.code !== "PGW_AUTH_FAILED") return failed(outcome.sqlstate, outcome.message);
    return failed(SqlState.invalidPassword, `password authentication failed for user "${ctx.user}"`);
  }
  ctx.send(encodeAuthentication({ kind: "SASLFinal", data: Buffer.from(outcome.serverFinal) }));
  return { kind: "ok" };
};
