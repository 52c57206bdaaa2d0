import * as Schema from "effect/Schema";
import * as SchemaIssue from "effect/SchemaIssue";
import { type AuditError, auditError } from "./AuditError.ts";
import { canonicalJson } from "./canonicalJson.ts";
import { AUDIT_SCHEMA_VERSION } from "./recordLine.ts";
import { TIMESTAMP_PATTERN } from "./timestamp.ts";

/**
 * The audit record format, version 2 (docs/audit-format.md). An *event* is what the proxy
 * emits; a *record* is the event after the chain has numbered, linked and authenticated it.
 */

export { AUDIT_SCHEMA_VERSION };

const Str = Schema.String;
const Opt = Schema.optionalKey;
const NonNegInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));
const NonNeg = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0));
export const Seq = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));
export const Hex64 = Str.check(Schema.isPattern(/^[0-9a-f]{64}$/));
/** Key ids are 128-bit fingerprints, hex. */
export const KeyId = Str.check(Schema.isPattern(/^[0-9a-f]{32}$/));
/** Safe inside a file name: segment files are `audit-<instance>-<segment>.jsonl`. */
export const InstanceId = Str.check(Schema.isPattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/));
export const Timestamp = Str.check(Schema.isPattern(TIMESTAMP_PATTERN));
export const SqlStateCode = Str.check(Schema.isPattern(/^[0-9A-Z]{5}$/));
export const SignatureAlgorithm = Schema.Literals(["ES256", "ES384"]);
export type SignatureAlgorithm = typeof SignatureAlgorithm.Type;

/** Who, from where, to what: present when known (AU-3). */
const EventEnvelope = {
  ts: Timestamp,
  session: Opt(Str),
  identity: Opt(Str),
  source: Opt(Str),
  database: Opt(Str),
  role: Opt(Str),
};

/** Added by the chain (src/audit/Chain.ts). */
const ChainEnvelope = {
  schema: Schema.Literal(AUDIT_SCHEMA_VERSION),
  id: Str,
  seq: Seq,
  instance: InstanceId,
  boot: InstanceId,
  prev: Hex64,
  hmacKey: KeyId,
  hmac: Hex64,
};

const variant = <const K extends string, const F extends Schema.Struct.Fields>(kind: K, fields: F) => ({
  event: Schema.Struct({ ...EventEnvelope, kind: Schema.Literal(kind), ...fields }),
  record: Schema.Struct({ ...EventEnvelope, ...ChainEnvelope, kind: Schema.Literal(kind), ...fields }),
});

const ConnectionAccepted = variant("connection.accepted", {
  transport: Schema.Literals(["tcp", "unix"]),
  local: Opt(Str),
});
const ConnectionClosed = variant("connection.closed", {
  reason: Str,
  durationMs: NonNeg,
  /** Every byte each way, the authentication phase included (AU-3(1)). */
  clientBytesIn: NonNegInt,
  clientBytesOut: NonNegInt,
  serverBytesIn: Opt(NonNegInt),
  serverBytesOut: Opt(NonNegInt),
  sqlstate: Opt(SqlStateCode),
});
const TlsLeg = Schema.Literals(["client", "server"]);
const TlsNegotiation = Schema.Literals(["ssl-request", "direct"]);
const TlsEstablished = variant("tls.established", {
  leg: TlsLeg,
  /** How the client asked for TLS: SSLRequest, or a direct TLS handshake (PostgreSQL 17+). */
  negotiation: Opt(TlsNegotiation),
  version: Str,
  cipher: Str,
  peerSubject: Opt(Str),
  /** SHA-256 of the peer certificate's DER, hex. */
  peerFingerprint: Opt(Hex64),
});
const TlsFailure = variant("tls.failure", {
  leg: TlsLeg,
  negotiation: Opt(TlsNegotiation),
  reason: Str,
});
const AuthAttempt = variant("auth.attempt", { method: Str, user: Str });
const AuthSuccess = variant("auth.success", { method: Str, user: Str });
const AuthFailure = variant("auth.failure", {
  method: Str,
  user: Opt(Str),
  /** Why, in words safe to show: never a password, proof or verifier. */
  reason: Str,
  sqlstate: Opt(SqlStateCode),
});
const AccessDecision = variant("access.decision", {
  decision: Schema.Literals(["allow", "deny"]),
  rule: Str,
  reason: Opt(Str),
});
const Transition = variant("transition", {
  machine: Schema.Literals(["client", "server"]),
  from: Str,
  to: Str,
  cause: Str,
});
const PoolCheckout = variant("pool.checkout", {
  /** `database/role` */
  pool: Str,
  /** The server connection lent to the session. */
  server: Str,
  mode: Schema.Literals(["session", "transaction", "statement"]),
  /** How long the session waited for it. */
  waitMs: NonNeg,
});
const PoolRelease = variant("pool.release", {
  pool: Str,
  server: Str,
  reason: Schema.Literals(["idle", "clientClosed", "serverLost", "error"]),
  /** Since the checkout of the same server connection by the same session, when it was recorded. */
  heldMs: Opt(NonNeg),
});
export const StatementMessage = Schema.Literals([
  "Query",
  "Parse",
  "Bind",
  "Execute",
  "FunctionCall",
  "Copy",
]);
export const StatementTextMode = Schema.Literals(["full", "normalized", "fingerprint", "none"]);
/** A state change folded into the statement record it happened for (same fields as `transition`). */
export const FoldedTransition = Schema.Struct({
  ts: Timestamp,
  machine: Schema.Literals(["client", "server"]),
  from: Str,
  to: Str,
  cause: Str,
});
export type FoldedTransition = typeof FoldedTransition.Type;
const Statement = variant("statement", {
  message: StatementMessage,
  /** The server connection that ran it. */
  server: Opt(Str),
  textMode: StatementTextMode,
  text: Opt(Str),
  fingerprint: Opt(Str),
  /** The parser that normalized or fingerprinted the text, e.g. `libpg-query 18.0.0`. */
  parser: Opt(Str),
  statementName: Opt(Str),
  portal: Opt(Str),
  paramCount: Opt(NonNegInt),
  paramFormats: Opt(Schema.Array(Schema.Literals(["text", "binary"]))),
  /** Only when configured to record values. */
  paramValues: Opt(Schema.Array(Schema.NullOr(Str))),
  commandTag: Opt(Str),
  rows: Opt(NonNegInt),
  durationMs: Opt(NonNeg),
  outcome: Schema.Literals(["ok", "error", "cancelled"]),
  sqlstate: Opt(SqlStateCode),
  /**
   * Every transition of the session's client machine and of `server`'s machine since the
   * previous record of either, oldest first, when not recorded as `transition` records.
   */
  transitions: Opt(Schema.Array(FoldedTransition)),
});
const KeyRotation = variant("audit.key.rotation", {
  keyType: Schema.Literals(["hmac", "signing"]),
  oldKeyId: KeyId,
  newKeyId: KeyId,
  /** Signing rotations carry the new public key, authenticated by the old key's checkpoint. */
  alg: Opt(SignatureAlgorithm),
  publicKeyPem: Opt(Str),
});
const SinkFailure = variant("sink.failure", {
  sink: Str,
  code: Str,
  message: Str,
  pending: Opt(NonNegInt),
});
const SinkRecovery = variant("sink.recovery", {
  sink: Str,
  downMs: NonNeg,
  caughtUp: NonNegInt,
});
const FipsStatus = variant("fips.status", {
  requested: Schema.Boolean,
  provider: Opt(Str),
  providerVersion: Opt(Str),
  /** Algorithm name → whether it worked (approved ones must, MD5 and ChaCha20 must not). */
  probes: Schema.Record(Str, Schema.Boolean),
  validatedCertificate: Opt(Str),
});
const AuditStarted = variant("audit.started", {
  version: Str,
  pid: NonNegInt,
});
export const CheckpointReason = Schema.Literals([
  "size",
  "age",
  "shutdown",
  "rotation",
  "recovery",
  "manual",
]);
export type CheckpointReason = typeof CheckpointReason.Type;
const Checkpoint = variant("checkpoint", {
  segment: Seq,
  firstSeq: Seq,
  lastSeq: NonNegInt,
  count: NonNegInt,
  /** RFC 6962 Merkle tree hash of the segment's lines before this one. */
  root: Hex64,
  /** Record hash (RFC 6962 leaf hash, H(0x00 ‖ line)) of the previous checkpoint's line; 64 zeros for the first. */
  prevCheckpoint: Hex64,
  reason: CheckpointReason,
  alg: SignatureAlgorithm,
  signKey: KeyId,
  /** Base64 IEEE P1363 (r‖s) ECDSA signature. */
  sig: Str.check(Schema.isPattern(/^[A-Za-z0-9+/]+={0,2}$/)),
  /** Bytes of a torn last line removed when a crashed segment was sealed on restart. */
  tornBytes: Opt(NonNegInt),
});

const variants = [
  ConnectionAccepted,
  ConnectionClosed,
  TlsEstablished,
  TlsFailure,
  AuthAttempt,
  AuthSuccess,
  AuthFailure,
  AccessDecision,
  Transition,
  PoolCheckout,
  PoolRelease,
  Statement,
  KeyRotation,
  SinkFailure,
  SinkRecovery,
  FipsStatus,
  AuditStarted,
] as const;

/** Every event the proxy may emit (checkpoints are made by the chain, not emitted). */
export const AuditEvent = Schema.Union([
  ConnectionAccepted.event,
  ConnectionClosed.event,
  TlsEstablished.event,
  TlsFailure.event,
  AuthAttempt.event,
  AuthSuccess.event,
  AuthFailure.event,
  AccessDecision.event,
  Transition.event,
  PoolCheckout.event,
  PoolRelease.event,
  Statement.event,
  KeyRotation.event,
  SinkFailure.event,
  SinkRecovery.event,
  FipsStatus.event,
  AuditStarted.event,
]);
export type AuditEvent = typeof AuditEvent.Type;
export type AuditKind = AuditEvent["kind"] | "checkpoint";
export type EventOf<K extends AuditEvent["kind"]> = Extract<AuditEvent, { kind: K }>;

/** Every line of a segment file. */
export const AuditRecord = Schema.Union([
  ConnectionAccepted.record,
  ConnectionClosed.record,
  TlsEstablished.record,
  TlsFailure.record,
  AuthAttempt.record,
  AuthSuccess.record,
  AuthFailure.record,
  AccessDecision.record,
  Transition.record,
  PoolCheckout.record,
  PoolRelease.record,
  Statement.record,
  KeyRotation.record,
  SinkFailure.record,
  SinkRecovery.record,
  FipsStatus.record,
  AuditStarted.record,
  Checkpoint.record,
]);
export type AuditRecord = typeof AuditRecord.Type;
export const CheckpointRecord = Checkpoint.record;
export type CheckpointRecord = typeof CheckpointRecord.Type;
export type KeyRotationRecord = typeof KeyRotation.record.Type;

export const AUDIT_EVENT_KINDS: readonly AuditEvent["kind"][] = variants.map(
  (v) => v.event.fields.kind.literal,
);

const formatIssue = SchemaIssue.makeFormatterDefault();

const invalid = (what: string, issue: SchemaIssue.Issue): AuditError =>
  auditError("PGW_AUDIT_INVALID_EVENT", `invalid audit ${what}: ${formatIssue(issue)}`);

const decoder =
  <T>(schema: Schema.Codec<T, unknown>, what: string) =>
  (u: unknown): T | AuditError => {
    const r = Schema.decodeUnknownExit(schema)(u, { onExcessProperty: "error" });
    if (r._tag === "Success") return r.value;
    const failure = r.cause.reasons.find((x) => x._tag === "Fail");
    if (failure?._tag === "Fail" && Schema.isSchemaError(failure.error))
      return invalid(what, failure.error.issue);
    return auditError("PGW_AUDIT_INVALID_EVENT", `invalid audit ${what}`);
  };

/** Checks an event against the schema; unknown fields are errors so nothing unvetted is logged. */
export const validateEvent: (u: unknown) => AuditEvent | AuditError = decoder(
  AuditEvent as unknown as Schema.Codec<AuditEvent, unknown>,
  "event",
);
/** Checks a parsed segment line against the schema. */
export const validateRecord: (u: unknown) => AuditRecord | AuditError = decoder(
  AuditRecord as unknown as Schema.Codec<AuditRecord, unknown>,
  "record",
);

/** The canonical JSON of a valid event, or why it is not one. */
export const encodeEvent = (u: unknown): string | AuditError => {
  const ev = validateEvent(u);
  return "_tag" in ev ? ev : canonicalJson(ev);
};
