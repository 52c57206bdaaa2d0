import type { MessageStream } from "../adapters/MessageStream.ts";
import {
  createScramServer,
  type ScramChannelBinding,
  type ScramMechanism,
  scramMechanisms,
} from "../auth/scramServer.ts";
import type { ScramVerifier } from "../auth/scramVerifier.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { encodeAuthentication } from "../protocol/backend.ts";
import { decodeSASLInitialResponse, decodeSASLResponse } from "../protocol/frontend.ts";

/** How the client's side of authentication ended; the session turns it into events and replies. */
export type AuthOutcome =
  /** `mechanism` is what the client proved its password with (undefined for trust). */
  | { readonly kind: "ok"; readonly mechanism?: ScramMechanism }
  /** The client went away; nothing is left to say. */
  | { readonly kind: "closed" }
  | { readonly kind: "violation"; readonly error: PgwardenError }
  /** `reason` says why, for pgwarden's log only: the client sees the same error either way. */
  | { readonly kind: "failed"; readonly error: PgwardenError; readonly reason?: string };

export interface ClientAuthContext {
  readonly method: "trust" | "scram-sha-256";
  readonly user: string;
  /** Undefined for an unknown user: the exchange then runs against a mock verifier. */
  readonly verifier: ScramVerifier | undefined;
  readonly mockSecret: Buffer;
  /** Iteration count the mock verifier shows: the real verifiers' own, so none stands out. */
  readonly mockIterations: number;
  /** tls-server-end-point data of the client leg when it is TLS: SCRAM-SHA-256-PLUS is then offered. */
  readonly channelBinding: ScramChannelBinding | undefined;
  readonly send: (message: Buffer) => void;
  /**
   * Puts a client message to the connection machine: undefined if legal, the violation if not,
   * or "abandoned" when the connection has moved on (a shutdown or the deadline).
   */
  readonly check: (message: Buffer) => PgwardenError | "abandoned" | undefined;
}

const failed = (sqlstate: string, message: string, reason?: string): AuthOutcome => ({
  kind: "failed",
  error: pgwardenError("PGW_AUTH_FAILED", sqlstate as SqlState, message),
  ...(reason === undefined ? {} : { reason }),
});

/**
 * The next authentication message, or the outcome that ends the exchange. No timer here: the
 * connection's one login deadline bounds the whole exchange.
 */
const next = async (stream: MessageStream, ctx: ClientAuthContext): Promise<Buffer | AuthOutcome> => {
  const msg = await stream.next();
  if (msg === "closed") return { kind: "closed" };
  if (isPgwardenError(msg)) return { kind: "violation", error: msg };
  const illegal = ctx.check(msg);
  if (illegal === "abandoned") return { kind: "closed" };
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
  const binding = ctx.channelBinding;
  const offered = scramMechanisms(binding);
  ctx.send(encodeAuthentication({ kind: "SASL", mechanisms: offered }));

  const first = await next(stream, ctx);
  if (!Buffer.isBuffer(first)) return first;
  const init = decodeSASLInitialResponse(first);
  if (isPgwardenError(init)) return { kind: "violation", error: init };
  const mechanism = offered.find((m) => m === init.mechanism);
  if (mechanism === undefined || init.data === null) {
    return failed(SqlState.protocolViolation, "client selected an invalid SASL authentication mechanism");
  }
  const scram = createScramServer(ctx.verifier, {
    mockSecret: ctx.mockSecret,
    user: ctx.user,
    mockIterations: ctx.mockIterations,
    mechanism,
    // Only a TLS leg has binding data; -PLUS is offered exactly then.
    ...(binding === undefined ? {} : { channelBinding: binding }),
  });
  const serverFirst = scram.handleClientFirst(init.data.toString("utf8"));
  if (isPgwardenError(serverFirst))
    return failed(serverFirst.sqlstate, serverFirst.message, scram.failureReason());
  ctx.send(encodeAuthentication({ kind: "SASLContinue", data: Buffer.from(serverFirst) }));

  const final = await next(stream, ctx);
  if (!Buffer.isBuffer(final)) return final;
  const outcome = scram.handleClientFinal(decodeSASLResponse(final).toString("utf8"));
  if (isPgwardenError(outcome)) {
    const reason = scram.failureReason();
    if (outcome.code !== "PGW_AUTH_FAILED") return failed(outcome.sqlstate, outcome.message, reason);
    return failed(SqlState.invalidPassword, `password authentication failed for user "${ctx.user}"`, reason);
  }
  ctx.send(encodeAuthentication({ kind: "SASLFinal", data: Buffer.from(outcome.serverFinal) }));
  return { kind: "ok", mechanism };
};
