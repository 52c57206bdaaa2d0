import type { ProxyEvent, StatementObservation } from "../runtime/EventSink.ts";
import type { SqlParser } from "../sql/parser.ts";
import type { AuditEvent } from "./AuditEvent.ts";

/**
 * Turns what the proxy emitted into audit events (src/audit/AuditEvent.ts): each gets the
 * who/where of its session (AU-3), and statement text is reduced per `audit.statements`. Runs on
 * the pipeline's fiber, never on the data path.
 */

export type StatementTextMode = "full" | "normalized" | "fingerprint" | "none";

interface Envelope {
  readonly ts: string;
  readonly session: string;
  readonly identity?: string;
  readonly source?: string;
  readonly database?: string;
  readonly role?: string;
}

interface Who {
  source?: string;
  identity?: string;
  database?: string;
  role?: string;
}

/** What the log knows of each live session, built from its own earlier events. */
export class SessionContexts {
  readonly #byConn = new Map<string, Who>();

  get size(): number {
    return this.#byConn.size;
  }

  envelope(conn: string, ts: string): Envelope {
    const w = this.#byConn.get(conn);
    const out: { -readonly [K in keyof Envelope]: Envelope[K] } = { ts, session: conn };
    if (w?.identity !== undefined) out.identity = w.identity;
    if (w?.source !== undefined) out.source = w.source;
    if (w?.database !== undefined) out.database = w.database;
    if (w?.role !== undefined) out.role = w.role;
    return out;
  }

  update(e: ProxyEvent): void {
    switch (e.kind) {
      case "connectionAccepted":
        this.#byConn.set(e.conn, { source: e.remote });
        return;
      case "accessDecision": {
        const w = this.#who(e.conn);
        w.database = e.database;
        if (e.role !== undefined) w.role = e.role;
        return;
      }
      case "authSuccess":
        this.#who(e.conn).identity = e.user;
        return;
    }
  }

  forget(conn: string): void {
    this.#byConn.delete(conn);
  }

  #who(conn: string): Who {
    let w = this.#byConn.get(conn);
    if (w === undefined) {
      w = {};
      this.#byConn.set(conn, w);
    }
    return w;
  }
}

const opt = <K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } =>
  (v === undefined ? {} : { [k]: v }) as { [P in K]?: V };

/** Adds the statement's text as the configured mode allows: literals never leave `normalized`. */
const addStatementText = (
  ev: Record<string, unknown>,
  s: StatementObservation,
  mode: StatementTextMode,
  parser: SqlParser | undefined,
): void => {
  if (s.sql === undefined || mode === "none") return;
  if (mode === "full") {
    ev.text = s.sql;
    return;
  }
  if (parser === undefined) return;
  const parserName = `libpg-query, PostgreSQL ${parser.parserVersion.text} grammar`;
  if (mode === "normalized") {
    const n = parser.normalize(s.sql);
    if (n.ok) ev.text = n.value;
  } else {
    const f = parser.fingerprint(s.sql);
    if (f.ok) ev.fingerprint = f.value;
  }
  ev.parser = parserName;
};

/** Node prints certificate fingerprints as `AB:CD:…`; records hold the 64 lowercase hex digits. */
const fingerprintHex = (f: string | undefined): string | undefined => {
  if (f === undefined) return undefined;
  const hex = f.replaceAll(":", "").toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
};

export interface EventOfOptions {
  readonly statements: StatementTextMode;
  readonly parser: SqlParser | undefined;
}

/** The audit event for one proxy event, or undefined when it records nothing. */
export const eventOf = (
  e: ProxyEvent,
  ts: string,
  ctx: SessionContexts,
  o: EventOfOptions,
): AuditEvent | undefined => {
  switch (e.kind) {
    case "transition":
      return {
        ...ctx.envelope(e.connectionId, ts),
        kind: "transition",
        machine: e.machine,
        from: e.from,
        to: e.to,
        cause: e.cause,
      };
    case "connectionAccepted":
      return { ...ctx.envelope(e.conn, ts), kind: "connection.accepted", transport: "tcp", local: e.local };
    case "connectionRefused":
      return {
        ts,
        source: e.remote,
        kind: "access.decision",
        decision: "deny",
        rule: "audit.onFailure: block",
        reason: e.reason,
      };
    case "authAttempt":
      return { ...ctx.envelope(e.conn, ts), kind: "auth.attempt", method: e.method, user: e.user };
    case "authSuccess":
      return { ...ctx.envelope(e.conn, ts), kind: "auth.success", method: e.method, user: e.user };
    case "authFailure":
      return {
        ...ctx.envelope(e.conn, ts),
        kind: "auth.failure",
        method: e.method,
        reason: e.reason,
        ...opt("user", e.user),
        ...opt("sqlstate", e.sqlstate),
      };
    case "accessDecision":
      return {
        ...ctx.envelope(e.conn, ts),
        kind: "access.decision",
        decision: e.decision,
        rule: e.rule,
        ...opt("reason", e.reason),
      };
    // Access rules decide before credentials; grants after: both are access decisions on the record.
    case "accessRule":
      return {
        ...ctx.envelope(e.conn, ts),
        kind: "access.decision",
        decision: e.action === "allow" ? "allow" : "deny",
        rule: `access.rules: ${e.rule}`,
        reason: e.text,
      };
    case "statement": {
      // Assigned member by member: this runs for every statement, and a spread per optional
      // member cost more than the rest of the record.
      const ev = ctx.envelope(e.conn, ts) as unknown as Record<string, unknown>;
      ev.kind = "statement";
      if (e.server !== undefined) ev.server = e.server;
      ev.message = e.message;
      ev.textMode = o.statements;
      addStatementText(ev, e, o.statements, o.parser);
      if (e.statementName !== undefined) ev.statementName = e.statementName;
      if (e.portal !== undefined) ev.portal = e.portal;
      if (e.paramCount !== undefined) ev.paramCount = e.paramCount;
      if (e.paramFormats !== undefined) ev.paramFormats = e.paramFormats;
      if (e.commandTag !== undefined) ev.commandTag = e.commandTag;
      if (e.rows !== undefined) ev.rows = e.rows;
      ev.durationMs = e.durationMs;
      ev.outcome = e.outcome;
      if (e.sqlstate !== undefined) ev.sqlstate = e.sqlstate;
      return ev as unknown as AuditEvent;
    }
    case "tlsHandshake":
      return e.ok
        ? {
            ...ctx.envelope(e.conn, ts),
            kind: "tls.established",
            leg: "client",
            negotiation: e.negotiation,
            version: e.protocol ?? "unknown",
            cipher: e.cipher ?? "unknown",
            ...opt("peerSubject", e.clientSubject?.replaceAll("\n", ", ")),
            ...opt("peerFingerprint", fingerprintHex(e.clientCertificate)),
          }
        : {
            ...ctx.envelope(e.conn, ts),
            kind: "tls.failure",
            leg: "client",
            negotiation: e.negotiation,
            reason: e.reason ?? "handshake failed",
          };
    case "poolCheckout":
      return {
        ...ctx.envelope(e.conn, ts),
        kind: "pool.checkout",
        pool: e.pool,
        server: e.server,
        mode: e.mode,
        waitMs: Math.max(0, e.waitedMs),
      };
    case "poolRelease":
      return {
        ...ctx.envelope(e.conn, ts),
        kind: "pool.release",
        pool: e.pool,
        server: e.server,
        reason: e.reason,
      };
    case "connectionClosed":
      return {
        ...ctx.envelope(e.conn, ts),
        kind: "connection.closed",
        reason: e.reason ?? "closed",
        durationMs: e.ms,
        clientBytesIn: e.bytesFromClient,
        clientBytesOut: e.bytesToClient ?? 0,
        serverBytesIn: e.bytesFromServer,
        ...opt("serverBytesOut", e.bytesToServer),
        ...opt("sqlstate", e.sqlstate),
      };
  }
};
