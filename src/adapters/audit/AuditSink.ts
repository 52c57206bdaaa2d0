import * as Data from "effect/Data";

/**
 * The contract between the audit pipeline and a remote sink. The pipeline hands over records that
 * are already chained and sealed; a sink treats each one as an opaque line and only moves it.
 */

export interface AuditLine {
  /** Per-instance sequence number of the record (the chain's `seq`). */
  readonly seq: number;
  /** Stable record id: the key a remote uses to drop a redelivered copy. */
  readonly id: string;
  /** One canonical JSON record, without a trailing newline. */
  readonly text: string;
}

export interface SinkCounters {
  /** Lines the remote acknowledged. */
  sent: number;
  /** Delivery attempts that failed. */
  failed: number;
  /** Delivery attempts that repeated an earlier, failed attempt. */
  retried: number;
  /** Lines held right now, including the batch in flight. */
  queued: number;
  /** `code: message` of the last failure; never holds secrets. */
  lastError?: string;
}

export interface AuditSink {
  readonly name: string;
  /** Delivers a batch in order; resolves only when the remote acknowledged every line (at-least-once; remote dedups by id). */
  deliver(batch: readonly AuditLine[]): Promise<void>;
  close(): Promise<void>;
}

/** Stable codes of sink failures, separate from the proxy's ErrorCode so the sinks stay leaf modules. */
export type SinkErrorCode =
  | "PGW_AUDIT_SINK_CONNECT"
  | "PGW_AUDIT_SINK_TLS"
  | "PGW_AUDIT_SINK_WRITE"
  | "PGW_AUDIT_SINK_TIMEOUT"
  | "PGW_AUDIT_SINK_REJECTED"
  | "PGW_AUDIT_SINK_CLOSED"
  | "PGW_AUDIT_SINK_CONFIG";

/** What `deliver` rejects with. `message` is safe to log: it never carries key material or records. */
export class SinkError extends Data.TaggedError("SinkError")<{
  readonly code: SinkErrorCode;
  readonly sink: string;
  readonly message: string;
}> {}

export const isSinkError = (u: unknown): u is SinkError => u instanceof SinkError;

/** Wraps whatever a client library threw into a SinkError, keeping only its message. */
export const toSinkError = (sink: string, code: SinkErrorCode, cause: unknown): SinkError =>
  isSinkError(cause)
    ? cause
    : new SinkError({ code, sink, message: cause instanceof Error ? cause.message : String(cause) });

/** The one-line form kept in `SinkCounters.lastError`. */
export const describeSinkError = (e: SinkError): string => `${e.code}: ${e.message}`;
