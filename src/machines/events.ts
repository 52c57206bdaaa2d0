/**
 * Events of the connection machine. Each carries only what a guard reads, and every distinct
 * event is one frozen object: the runtime sends these constants, never fresh objects, so the hot
 * path allocates nothing and a transition can be cached by (state, event) identity.
 * Payloads that matter to audit (query text, error fields) travel beside the event, not in it.
 */

const ev = <const T extends { type: string }>(e: T): Readonly<T> => Object.freeze(e);

export const TxStatus = ["I", "T", "E"] as const;
export type TxStatus = (typeof TxStatus)[number];

export const Events = {
  // First packet
  SSLRequest: ev({ type: "SSLRequest", tlsAvailable: false }),
  SSLRequestTls: ev({ type: "SSLRequest", tlsAvailable: true }),
  GSSENCRequest: ev({ type: "GSSENCRequest" }),
  DirectTLS: ev({ type: "DirectTLS", tlsAvailable: false }),
  DirectTLSAvailable: ev({ type: "DirectTLS", tlsAvailable: true }),
  Startup: ev({ type: "Startup" }),
  /** A first packet PostgreSQL drops without a word (bad length, bad cancel packet): so does pgwarden. */
  StartupInvalid: ev({ type: "StartupInvalid" }),
  CancelRequest: ev({ type: "CancelRequest" }),
  /** The forwarded cancel is done: PostgreSQL closed its cancel connection, or the wait timed out. */
  CancelDone: ev({ type: "CancelDone" }),
  TlsEstablished: ev({ type: "TlsEstablished" }),
  TlsFailed: ev({ type: "TlsFailed" }),
  // Authentication
  AuthResponse: ev({ type: "AuthResponse" }),
  ClientAuthOk: ev({ type: "ClientAuthOk" }),
  ClientAuthFailed: ev({ type: "ClientAuthFailed" }),
  UpstreamReady: ev({ type: "UpstreamReady" }),
  UpstreamFailed: ev({ type: "UpstreamFailed" }),
  // Client control messages
  Query: ev({ type: "Query" }),
  Parse: ev({ type: "Parse" }),
  Bind: ev({ type: "Bind" }),
  Describe: ev({ type: "Describe" }),
  Execute: ev({ type: "Execute" }),
  Close: ev({ type: "Close" }),
  Flush: ev({ type: "Flush" }),
  Sync: ev({ type: "Sync" }),
  FunctionCall: ev({ type: "FunctionCall" }),
  CopyDone: ev({ type: "CopyDone" }),
  CopyFail: ev({ type: "CopyFail" }),
  Terminate: ev({ type: "Terminate" }),
  /** A client message type the protocol does not define. */
  UnknownMessage: ev({ type: "UnknownMessage" }),
  // Server control messages
  CopyInResponse: ev({ type: "CopyInResponse" }),
  CopyOutResponse: ev({ type: "CopyOutResponse" }),
  CopyBothResponse: ev({ type: "CopyBothResponse" }),
  ServerCopyDone: ev({ type: "ServerCopyDone" }),
  /** PostgreSQL sent an ErrorResponse of severity FATAL or PANIC: it is relayed, and the session ends. */
  ServerFatal: ev({ type: "ServerFatal" }),
  // Lifecycle
  ProtocolViolation: ev({ type: "ProtocolViolation" }),
  Shutdown: ev({ type: "Shutdown" }),
  Timeout: ev({ type: "Timeout" }),
  ServerClosed: ev({ type: "ServerClosed" }),
  ClientClosed: ev({ type: "ClientClosed" }),
  Closed: ev({ type: "Closed" }),
} as const;

export interface ReadyForQueryEvent {
  readonly type: "ReadyForQuery";
  readonly status: TxStatus;
  /** More sync points are outstanding, or extended messages were sent after the last Sync. */
  readonly more: boolean;
}

const ready = (status: TxStatus, more: boolean): ReadyForQueryEvent =>
  ev({ type: "ReadyForQuery", status, more });

/** ReadyForQuery events indexed by status, then by `more`. */
export const ReadyForQuery: Readonly<Record<TxStatus, readonly [ReadyForQueryEvent, ReadyForQueryEvent]>> = {
  I: [ready("I", false), ready("I", true)],
  T: [ready("T", false), ready("T", true)],
  E: [ready("E", false), ready("E", true)],
};

export type ConnectionEvent = (typeof Events)[keyof typeof Events] | ReadyForQueryEvent;
export type ConnectionEventType = ConnectionEvent["type"];

/** Every distinct event: what model-based tests and the diagram generator enumerate. */
export const allEvents: readonly ConnectionEvent[] = [
  ...Object.values(Events),
  ...TxStatus.flatMap((s) => ReadyForQuery[s]),
];
