import type { Transition } from "../machines/MachineRunner.ts";

/** A statement as the relay saw it: the request's bytes decoded, the server's answer attached. */
export interface StatementObservation {
  readonly kind: "statement";
  readonly conn: string;
  /** The server connection that ran it; its machine's transitions fold into the record. */
  readonly server?: string;
  readonly message: "Query" | "Parse" | "Bind" | "Execute" | "FunctionCall" | "Copy";
  /** Raw SQL text (Query, Parse); the pipeline reduces it per `audit.statements`, off the data path. */
  readonly sql?: string;
  readonly statementName?: string;
  readonly portal?: string;
  readonly paramCount?: number;
  readonly paramFormats?: readonly ("text" | "binary")[];
  readonly commandTag?: string;
  readonly rows?: number;
  readonly durationMs: number;
  readonly outcome: "ok" | "error" | "cancelled";
  readonly sqlstate?: string;
}

/**
 * What the proxy decides and observes, as values: the audit pipeline subscribes here. Emitting
 * must never block or throw into the connection; a sink queues and returns.
 */
export type ProxyEvent =
  | ({ readonly kind: "transition" } & Transition)
  | {
      readonly kind: "connectionAccepted";
      readonly conn: string;
      readonly remote: string;
      readonly local: string;
    }
  | { readonly kind: "connectionRefused"; readonly remote: string; readonly reason: string }
  | { readonly kind: "authAttempt"; readonly conn: string; readonly method: string; readonly user: string }
  | { readonly kind: "authSuccess"; readonly conn: string; readonly method: string; readonly user: string }
  | {
      readonly kind: "authFailure";
      readonly conn: string;
      readonly method: string;
      readonly user: string | undefined;
      /** Words safe to record: never a password, proof or verifier. */
      readonly reason: string;
      readonly sqlstate: string | undefined;
    }
  | {
      readonly kind: "accessDecision";
      readonly conn: string;
      readonly decision: "allow" | "deny";
      readonly rule: string;
      readonly database: string;
      readonly role: string | undefined;
      readonly reason: string | undefined;
    }
  | StatementObservation
  | {
      readonly kind: "connectionClosed";
      readonly conn: string;
      readonly ms: number;
      readonly bytesFromClient: number;
      readonly bytesFromServer: number;
      readonly bytesToClient?: number;
      readonly bytesToServer?: number;
      readonly reason?: string;
      readonly sqlstate?: string;
      readonly user: string | undefined;
      readonly database: string | undefined;
    }
  /** The client leg's TLS handshake: what was negotiated, or why it failed. */
  | {
      readonly kind: "tlsHandshake";
      readonly conn: string;
      readonly negotiation: "ssl-request" | "direct";
      readonly ok: boolean;
      readonly protocol?: string;
      readonly cipher?: string;
      /** SHA-256 fingerprint of a verified client certificate. */
      readonly clientCertificate?: string;
      /** Subject of that certificate, as Node prints it (one `attr=value` per line). */
      readonly clientSubject?: string;
      readonly reason?: string;
    }
  /** The pool lent server connection `server` to client connection `conn`. */
  | {
      readonly kind: "poolCheckout";
      readonly conn: string;
      readonly server: string;
      /** `database/role` */
      readonly pool: string;
      readonly mode: "session" | "transaction" | "statement";
      readonly waitedMs: number;
    }
  /** The client connection gave the server connection back (or lost it). */
  | {
      readonly kind: "poolRelease";
      readonly conn: string;
      readonly server: string;
      readonly pool: string;
      readonly reason: "idle" | "clientClosed" | "serverLost" | "error";
    }
  /** An access-rule decision and the rule that made it (`(implicit reject)` when none matched). */
  | {
      readonly kind: "accessRule";
      readonly conn: string;
      readonly action: "allow" | "reject";
      readonly rule: string;
      readonly index: number;
      readonly method: string | undefined;
      readonly identity: string;
      readonly database: string;
      readonly source: string | undefined;
      readonly transport: "plain" | "tls" | "mtls";
      readonly text: string;
    }
  /** A session refused by a concurrency limit, or ended by the idle or lifetime deadline. */
  | {
      readonly kind: "sessionControl";
      readonly conn: string;
      readonly control: "maxPerIdentity" | "maxPerSource" | "idleTimeout" | "maxLifetime";
      readonly identity: string | undefined;
      readonly source: string | undefined;
      readonly limit: number;
    }
  /** SIGHUP: a certificate, rules or users reload, applied or kept back. */
  | {
      readonly kind: "reload";
      readonly what: "tls" | "access" | "sessions";
      readonly ok: boolean;
      readonly reason?: string;
    }
  /** The FIPS self-test at start. */
  | {
      readonly kind: "fipsStatus";
      readonly enabled: boolean;
      readonly passed: boolean;
      readonly provider: string | undefined;
      readonly results: readonly { readonly name: string; readonly ok: boolean }[];
    };

export interface EventSink {
  emit(event: ProxyEvent): void;
  /**
   * A state transition, when the sink takes them without the event object (the audit worker
   * sends them compactly); absent, transitions arrive through `emit` as `kind: "transition"`.
   */
  transition?(t: Transition): void;
  /** Present when the sink wants statement events: the relay then reads statement bytes. */
  readonly statements?: boolean;
  /**
   * Why new statements and connections must be refused right now (audit.onFailure: block and a
   * required destination cannot take records), or undefined while they may proceed.
   */
  blocked?(): string | undefined;
}

/** The sink when audit is off: events go nowhere, at no cost. */
export const discardEvents: EventSink = { emit: () => {} };
