import type { Transition } from "../machines/MachineRunner.ts";

/**
 * What the proxy decides and observes, as values: the audit pipeline subscribes here. Emitting
 * must never block or throw into the connection; a sink queues and returns.
 */
export type ProxyEvent =
  | ({ readonly kind: "transition" } & Transition)
  | {
      readonly kind: "connectionClosed";
      readonly conn: string;
      readonly ms: number;
      readonly bytesFromClient: number;
      readonly bytesFromServer: number;
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
      readonly reason?: string;
    }
  /** An access decision and the rule that made it (`(implicit reject)` when none matched). */
  | {
      readonly kind: "accessDecision";
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
}

/** The sink until the audit pipeline lands: events go nowhere, at no cost. */
export const discardEvents: EventSink = { emit: () => {} };
