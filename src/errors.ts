/**
 * Errors are values. Each carries a stable `code` operators and tests can match on, and the
 * SQLSTATE the client is sent when the error ends its connection.
 */
export const SqlState = {
  protocolViolation: "08P01",
  connectionFailure: "08006",
  connectionRejected: "08004",
  invalidAuthorization: "28000",
  invalidPassword: "28P01",
  tooManyConnections: "53300",
  /** Class 53: the statement did not run for want of a resource (the audit trail) and may be retried. */
  auditUnavailable: "53000",
  adminShutdown: "57P01",
  idleSessionTimeout: "57P05",
  cannotConnectNow: "57P03",
  featureNotSupported: "0A000",
  /** Class 53: no server connection became free in time. */
  insufficientResources: "53000",
  idleInTransactionTimeout: "25P03",
  transactionTimeout: "25P04",
  inFailedSqlTransaction: "25P02",
  invalidParameterValue: "22023",
  invalidStatementName: "26000",
  duplicatePreparedStatement: "42P05",
  internalError: "XX000",
} as const;
export type SqlState = (typeof SqlState)[keyof typeof SqlState];

/** Stable codes: the part of an error that never changes wording. */
export type ErrorCode =
  | "PGW_PROTOCOL"
  | "PGW_MESSAGE_TOO_LARGE"
  | "PGW_STARTUP_TOO_LARGE"
  | "PGW_STARTUP_INVALID"
  | "PGW_ACCESS_DENIED"
  | "PGW_BUFFER_LIMIT"
  | "PGW_TIMEOUT"
  | "PGW_UNSUPPORTED_PROTOCOL"
  | "PGW_UNSUPPORTED_PROTOCOL_V2"
  | "PGW_ILLEGAL_MESSAGE"
  | "PGW_AUTH_FAILED"
  | "PGW_AUTH_UNSUPPORTED"
  | "PGW_AUTH_TIMEOUT"
  | "PGW_TOO_MANY_CONNECTIONS"
  | "PGW_UPSTREAM_UNAVAILABLE"
  | "PGW_UPSTREAM_AUTH"
  | "PGW_UPSTREAM_CLOSED"
  | "PGW_SHUTDOWN"
  | "PGW_ACCESS_DENIED"
  | "PGW_SESSION_LIMIT"
  | "PGW_IDLE_TIMEOUT"
  | "PGW_SESSION_LIFETIME"
  | "PGW_CONFIG"
  | "PGW_AUDIT_UNAVAILABLE"
  | "PGW_TLS_CONFIG"
  | "PGW_TLS_HANDSHAKE"
  | "PGW_TLS_TIMEOUT"
  | "PGW_TLS_ALPN"
  | "PGW_TLS_PIPELINED"
  | "PGW_TLS_CLIENT_CERT"
  | "PGW_TLS_CLOSED"
  | "PGW_UPSTREAM_TLS"
  | "PGW_FIPS"
  | "PGW_USERS_FILE"
  | "PGW_POOL_WAIT_TIMEOUT"
  | "PGW_POOL_FULL"
  | "PGW_IDLE_IN_TRANSACTION"
  | "PGW_TRANSACTION_TIMEOUT"
  | "PGW_STATEMENT_MODE"
  | "PGW_PINNED_STATE_REFUSED"
  | "PGW_PREPARED_STATEMENT"
  | "PGW_INTERNAL";

export interface PgwardenError {
  readonly _tag: "PgwardenError";
  readonly code: ErrorCode;
  readonly sqlstate: SqlState;
  /** Safe to show the client and to log: never holds secrets. */
  readonly message: string;
  readonly detail?: string;
}

export const pgwardenError = (
  code: ErrorCode,
  sqlstate: SqlState,
  message: string,
  detail?: string,
): PgwardenError =>
  detail === undefined
    ? { _tag: "PgwardenError", code, sqlstate, message }
    : { _tag: "PgwardenError", code, sqlstate, message, detail };

export const protocolError = (message: string, detail?: string): PgwardenError =>
  pgwardenError("PGW_PROTOCOL", SqlState.protocolViolation, message, detail);

export const isPgwardenError = (u: unknown): u is PgwardenError =>
  typeof u === "object" && u !== null && (u as { _tag?: unknown })._tag === "PgwardenError";
