/**
 * Message type bytes of the v3 protocol, as char codes so the hot path compares numbers.
 * Frontend and backend reuse letters with different meanings, hence two tables.
 */
export const Frontend = {
  Bind: 0x42, // B
  Close: 0x43, // C
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Describe: 0x44, // D
  Execute: 0x45, // E
  Flush: 0x48, // H
  FunctionCall: 0x46, // F
  Parse: 0x50, // P
  /** PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse share 'p'. */
  Password: 0x70, // p
  Query: 0x51, // Q
  Sync: 0x53, // S
  Terminate: 0x58, // X
} as const;

export const Backend = {
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  CommandComplete: 0x43, // C
  CopyBothResponse: 0x57, // W
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  DataRow: 0x44, // D
  EmptyQueryResponse: 0x49, // I
  ErrorResponse: 0x45, // E
  FunctionCallResponse: 0x56, // V
  NegotiateProtocolVersion: 0x76, // v
  NoData: 0x6e, // n
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  ParameterDescription: 0x74, // t
  ParameterStatus: 0x53, // S
  ParseComplete: 0x31, // 1
  PortalSuspended: 0x73, // s
  ReadyForQuery: 0x5a, // Z
  RowDescription: 0x54, // T
} as const;

/** Request codes carried by the untagged first packet in place of a protocol version. */
export const RequestCode = {
  protocol30: 196608, // 3.0
  protocol32: 196610, // 3.2 (PostgreSQL 18)
  cancel: 80877102,
  ssl: 80877103,
  gssenc: 80877104,
} as const;

/** A TLS handshake record's first byte: PostgreSQL 17 direct TLS skips the SSLRequest. */
export const TLS_HANDSHAKE_BYTE = 0x16;

/** PostgreSQL's own cap on the first packet (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10_000;
/** PostgreSQL's limit for messages that have no reason to be large (PQ_SMALL_MESSAGE_LIMIT). */
export const SMALL_MESSAGE_LIMIT = 10_000;
/** PostgreSQL's limit for authentication tokens (PG_MAX_AUTH_TOKEN_LENGTH). */
export const AUTH_MESSAGE_LIMIT = 65_535;
/** Protocol 3.2 lets the cancel secret grow to 256 bytes. */
export const MAX_CANCEL_SECRET = 256;

export const typeName = (table: Record<string, number>, code: number): string => {
  for (const key in table) if (table[key] === code) return key;
  return `0x${code.toString(16).padStart(2, "0")}`;
};

export const frontendName = (code: number): string => typeName(Frontend, code);
export const backendName = (code: number): string => typeName(Backend, code);
