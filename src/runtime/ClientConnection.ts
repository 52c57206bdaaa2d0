import type { Socket } from "node:net";
import type { SecureContext } from "node:tls";
import type { Logger } from "pino";
import { MessageStream } from "../adapters/MessageStream.ts";
import { startTlsOnSocket, type TlsSession } from "../adapters/tls/startTls.ts";
import type {
  connectUpstream,
  sendCancel,
  UpstreamCredentials,
  UpstreamTarget,
} from "../adapters/upstream.ts";
import { serveAdmin } from "../admin/AdminSession.ts";
import { type AdminConfig, routeAdmin } from "../admin/config.ts";
import type { AdminSource } from "../admin/snapshot.ts";
import { TLS_SERVER_END_POINT, tlsServerEndPoint } from "../auth/channelBinding.ts";
import type { ScramChannelBinding } from "../auth/scramServer.ts";
import type { ScramVerifier } from "../auth/scramVerifier.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import type { ClientAction, DeadlinePhase, FinalError } from "../machines/actions.ts";
import { Events } from "../machines/events.ts";
import { type ClientRunner, MachineRunner, type TransitionListener } from "../machines/MachineRunner.ts";
import {
  accessDeniedError,
  type CompiledAccess,
  describeDecision,
  type RuleMethod,
} from "../policy/accessRules.ts";
import { describeCertIdentity } from "../policy/certIdentity.ts";
import { type Destination, type GrantPolicy, resolveGrant } from "../policy/grants.ts";
import {
  isSessionRefusal,
  type SessionCounter,
  type SessionLease,
  type SessionTimers,
  sessionEndError,
  sessionLimitError,
  sweepPeriodMs,
  visitSession,
} from "../policy/sessionLimits.ts";
import { filterStartupParameters, type StartupPolicy } from "../policy/startupParameters.ts";
import type { Pool, ServerPool, Waiter } from "../pool/ServerPool.ts";
import { replayQueries, SessionState } from "../pool/SessionState.ts";
import {
  decodeFields,
  encodeAuthentication,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
} from "../protocol/backend.ts";
import { frontendName } from "../protocol/messageTypes.ts";
import { clientAuthPolicy, clientSessionTypes } from "../protocol/policies.ts";
import { encodeV2Error, SSL_REFUSE } from "../protocol/startup.ts";
import type { SqlParser } from "../sql/parser.ts";
import type { CancelRegistry } from "./CancelRegistry.ts";
import { authenticateClient } from "./clientAuth.ts";
import { clientEvents } from "./clientEvents.ts";
import type { Deadlines } from "./Deadlines.ts";
import { discardEvents, type EventSink } from "./EventSink.ts";
import {
  type CancelPacket,
  FirstPacket,
  type FirstPacketOutcome,
  type StartupPacket,
} from "./FirstPacket.ts";
import { Link, type PooledSession } from "./Link.ts";
import { type ServerConnection, settingRefusal } from "./ServerConnection.ts";
import { own, type SocketOwner } from "./socketOwner.ts";

/** The client leg's TLS, when `tls.mode` is not disable. */
export interface ClientTlsDeps {
  readonly mode: "allow" | "prefer" | "require";
  /** The context new handshakes use: swapped on SIGHUP, sessions keep theirs. */
  readonly context: () => SecureContext;
  /** `tls.clientCa` is set: certificates are requested and verified. */
  readonly requestCert: boolean;
  readonly handshakeTimeoutMs: number;
}

/** Which transport the client leg runs on: what access rules match on. */
export type ClientTransport = "plain" | "tls" | "mtls";

/** What every client connection shares: configuration turned into policies, and the services. */
export interface ConnectionDeps {
  readonly tls: ClientTlsDeps | undefined;
  readonly auth: {
    readonly method: "trust" | "scram-sha-256";
    readonly timeoutMs: number;
    readonly allowPasswordOverPlaintext: boolean;
  };
  readonly limits: {
    readonly maxMessageBytes: number;
    readonly maxBufferedBytesPerConnection: number;
    readonly lingerMs: number;
  };
  readonly startup: StartupPolicy;
  /** Access rules and certificate mapping as compiled now (replaced on SIGHUP). */
  readonly access: () => CompiledAccess;
  readonly grants: GrantPolicy;
  /** The server's open connections, by id: a connection leaves it once it has closed. */
  readonly live: Map<string, ClientConnection>;
  /** Concurrent-session leases and the idle/lifetime deadlines (`sessions`). */
  readonly sessions: { readonly counter: SessionCounter; readonly timers: () => SessionTimers };
  readonly target: UpstreamTarget;
  readonly credentials: UpstreamCredentials | undefined;
  readonly users: () => ReadonlyMap<string, ScramVerifier>;
  /** Iteration count unknown users' mock SCRAM shows: the users file's own. */
  readonly mockIterations: () => number;
  /** Keys the mock SCRAM exchange for unknown users, so they look like wrong passwords. */
  readonly mockSecret: Buffer;
  readonly cancels: CancelRegistry;
  /** The admin console: who may open it, and what it shows. */
  readonly admin: { readonly config: AdminConfig; readonly source: () => AdminSource };
  /** The pools of server connections, by (database, upstream role). */
  readonly pool: ServerPool;
  /** Transaction and statement mode: what pooling does with state, and when a transaction is too long. */
  readonly pooling: {
    readonly refusePins: boolean;
    readonly idleInTransactionTimeoutMs: number;
    readonly transactionTimeoutMs: number;
    /** PostgreSQL's parser, loaded at start when a pooled mode is configured. */
    readonly parser: SqlParser | undefined;
  };
  /** Client and cancel slots, taken once the first packet says which the connection is. */
  readonly admission: Admission;
  readonly deadlines: Deadlines;
  readonly events: EventSink;
  readonly log: Logger;
  readonly onTransition: TransitionListener | undefined;
  readonly connectUpstream: typeof connectUpstream;
  readonly sendCancel: typeof sendCancel;
}

/** Counts clients and cancel connections separately, as PostgreSQL serves cancels when full. */
export interface Admission {
  admitClient(): boolean;
  releaseClient(): void;
  admitCancel(): boolean;
  releaseCancel(): void;
}

const adminShutdown = pgwardenError(
  "PGW_SHUTDOWN",
  SqlState.adminShutdown,
  "terminating connection due to administrator command",
);
const connectionLost = pgwardenError(
  "PGW_UPSTREAM_CLOSED",
  SqlState.connectionFailure,
  "server closed the connection unexpectedly",
);
const loginTimeout = pgwardenError(
  "PGW_AUTH_TIMEOUT",
  SqlState.connectionFailure,
  "authentication timed out",
);
const tlsRequired = pgwardenError(
  "PGW_ACCESS_DENIED",
  SqlState.invalidAuthorization,
  "TLS is required: connection without encryption refused",
);
const passwordOverPlaintext = pgwardenError(
  "PGW_ACCESS_DENIED",
  SqlState.invalidAuthorization,
  "password authentication over an unencrypted connection is not allowed",
);
const certificateRefused = (user: string): PgwardenError =>
  pgwardenError(
    "PGW_TLS_CLIENT_CERT",
    SqlState.invalidAuthorization,
    `certificate authentication failed for user ${JSON.stringify(user)}`,
  );
const READY_IDLE = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]);
const AUTH_OK = encodeAuthentication({ kind: "Ok" });

/** The startup settings a client forwards upstream, without user and database (the pool's). */
const forwarded = (parameters: ReadonlyMap<string, string>): Map<string, string> =>
  new Map([...parameters].filter(([k]) => k !== "user" && k !== "database"));

/** Session mode: connections are reused only for clients with the same startup settings. */
const loginKeyOf = (parameters: ReadonlyMap<string, string>): string =>
  JSON.stringify([...forwarded(parameters)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

const poolFull = pgwardenError(
  "PGW_POOL_FULL",
  SqlState.tooManyConnections,
  "sorry, too many clients already for this database and role",
);
const tooManyClients = pgwardenError(
  "PGW_TOO_MANY_CONNECTIONS",
  SqlState.tooManyConnections,
  "sorry, too many clients already",
);

const NOTHING_PENDING: readonly Buffer[] = Object.freeze([]);

/** Each pool's PooledSession, shared by its clients (a reload makes new pooling settings, and so new ones). */
const pooledSessions = new WeakMap<
  Pool,
  { readonly of: ConnectionDeps["pooling"]; readonly session: PooledSession }
>();

const pooledSession = (pool: Pool, pooling: ConnectionDeps["pooling"]): PooledSession => {
  const known = pooledSessions.get(pool);
  if (known !== undefined && known.of === pooling) return known.session;
  const session: PooledSession = { pool, ...pooling };
  pooledSessions.set(pool, { of: pooling, session });
  return session;
};

/**
 * Why the client's startup settings could not be applied. PostgreSQL's own words when it judged
 * a value (22023 names the parameter and the value the client sent, nothing of the server);
 * anything else stays opaque, as every upstream refusal does.
 */
const settingsRefused = (error: Buffer | undefined): PgwardenError => {
  const fields = error === undefined ? undefined : decodeFields(error);
  return (
    (fields instanceof Map ? settingRefusal(fields.get("C"), fields.get("M")) : undefined) ??
    pgwardenError("PGW_UPSTREAM_AUTH", SqlState.connectionRejected, "the startup settings were refused")
  );
};

/**
 * The client half of a connection: the client socket, the first packet, client authentication,
 * the startup boundary and the connection machine — whose transitions' actions this class
 * executes (`exec`). It reaches PostgreSQL only through a Link to a ServerConnection.
 *
 * Every ending is a transition to `violation` or `terminating`; their actions send the final
 * error (or nothing, where PostgreSQL sends nothing), end both legs and arm a linger after which
 * both sockets are destroyed. Nothing else closes a socket.
 */
export class ClientConnection implements SocketOwner {
  readonly id: string;
  readonly machine: ClientRunner;
  /** The accepted TCP socket. */
  private readonly raw: Socket;
  /** What the session reads and writes: `raw`, or the TLS socket on top of it once the handshake is done. */
  private transport: Socket;
  private tlsSession: TlsSession | undefined;
  private tlsRequest: { negotiation: "ssl-request" | "direct"; buffered: Buffer } | undefined;
  private readonly deps: ConnectionDeps;
  private first: FirstPacket | undefined;
  private startup: StartupPacket | undefined;
  private leftover: Buffer | undefined;
  private minor = 0;
  private stream: MessageStream | undefined;
  private server: ServerConnection | undefined;
  private link: Link | undefined;
  private clientKey: ReturnType<CancelRegistry["issue"]> | undefined;
  private destination: Destination | undefined;
  /** The error that travelled beside the event whose actions send it. */
  private finalError: PgwardenError | undefined;
  private errorSent = false;
  private clientGone = false;
  private admitted: "client" | "cancel" | undefined;
  private lease: SessionLease | undefined;
  /** Session controls: when relaying began, the last client activity seen, and the bytes read then. */
  private sessionStartedAt = 0;
  private lastActivityAt = 0;
  private bytesSeen = 0;
  private readonly openedAt = Date.now();
  user: string | undefined;
  database: string | undefined;
  /**
   * Told, with its argument, once both sockets are closed and the machine is final. Fields, not a
   * promise: every idle connection would otherwise hold the promise, its resolver and a reaction
   * per listener; with the argument, a fiber's resume is the listener as it is (Server.ts).
   */
  private closedListener: ((arg: never) => void) | undefined;
  private closedArg: unknown;
  private isClosed = false;

  /** Calls `listener(arg)` once the connection has closed (now, if it has), after earlier listeners. */
  whenClosed<T>(listener: (arg: T) => void, arg?: T): void {
    if (this.isClosed) {
      listener(arg as T);
      return;
    }
    const before = this.closedListener as ((arg: unknown) => void) | undefined;
    const beforeArg = this.closedArg;
    this.closedListener =
      before === undefined
        ? listener
        : () => {
            before(beforeArg);
            listener(arg as T);
          };
    this.closedArg = before === undefined ? arg : undefined;
  }

  /** The same as a promise, for callers that await it (tests, shutdown). */
  get closed(): Promise<void> {
    return new Promise((resolve) => this.whenClosed(() => resolve()));
  }

  constructor(id: string, socket: Socket, deps: ConnectionDeps) {
    this.id = id;
    this.raw = socket;
    this.transport = socket;
    this.deps = deps;
    this.machine = new MachineRunner(id, deps.onTransition);
  }

  /** The PostgreSQL backend's PID once logged in upstream. */
  get pid(): number | undefined {
    return this.server?.pid;
  }

  /** The client leg everything after the first packet uses (Link included): TLS once negotiated. */
  get socket(): Socket {
    return this.transport;
  }

  get transportKind(): ClientTransport {
    const t = this.tlsSession;
    return t === undefined ? "plain" : t.peer === undefined ? "tls" : "mtls";
  }

  /** The client leg's TLS session, once established. */
  get tls(): TlsSession | undefined {
    return this.tlsSession;
  }

  get tlsAvailable(): boolean {
    return this.deps.tls !== undefined && this.tlsSession === undefined;
  }

  get bytesFromClient(): number {
    return this.raw.bytesRead;
  }

  get bytesFromServer(): number {
    const s = this.server?.socket;
    return this.serverBytes + (s === undefined ? 0 : s.bytesRead - this.serverBytesBefore);
  }

  /** What SHOW CLIENTS and SHOW POOLS read about this client. */
  get poolView():
    | {
        readonly pool: Pool;
        readonly state: "active" | "waiting" | "idle";
        readonly server: ServerConnection | undefined;
        readonly openedAt: number;
        readonly requestedAt: number;
        readonly waitingSince: number;
        readonly applicationName: string;
        readonly remote: { addr: string; port: number; localAddr: string; localPort: number };
      }
    | undefined {
    const pool = this.pool;
    if (pool === undefined) return undefined;
    const r = this.raw;
    const server = this.link?.server ?? this.server;
    const waiting = this.waiter !== undefined || this.link?.waitingSince !== undefined;
    return {
      pool,
      state: waiting ? "waiting" : server !== undefined ? "active" : "idle",
      server,
      openedAt: this.openedAt,
      requestedAt: this.requestedAt,
      waitingSince: this.link?.waitingSince ?? this.waitingSince,
      applicationName: this.sessionState?.settings.get("application_name")?.text ?? "",
      remote: {
        addr: r.remoteAddress ?? "",
        port: r.remotePort ?? 0,
        localAddr: r.localAddress ?? "",
        localPort: r.localPort ?? 0,
      },
    };
  }

  private requestedAt = Date.now();
  private waitingSince = Date.now();

  start(): void {
    const c = this.socket;
    c.setNoDelay(true);
    c.setKeepAlive(true);
    own(c, this);
    this.first = new FirstPacket(c, this);
    this.first.start();
    this.machine.start(this);
    if (this.deps.events !== discardEvents)
      this.deps.events.emit({
        kind: "connectionAccepted",
        conn: this.id,
        remote: `${c.remoteAddress}:${c.remotePort}`,
        local: `${c.localAddress}:${c.localPort}`,
      });
    const log = this.deps.log;
    if (log.isLevelEnabled("info"))
      log.info({ conn: this.id, remote: `${c.remoteAddress}:${c.remotePort}` }, "client connected");
  }

  /** Ends the connection for a shutdown: the client is told why, as PostgreSQL does. */
  shutdown(): void {
    this.machine.send(Events.Shutdown);
  }

  /** Destroys both sockets now: the end of the linger, or the scope closing. */
  destroy(): void {
    this.transport.destroy();
    if (this.transport !== this.raw) this.raw.destroy();
    this.server?.destroy();
    // The endings that follow may arm the linger again; settling clears it for good.
    this.deps.deadlines.clear(this, "login");
  }

  // Actions ----------------------------------------------------------------------------------------

  /** Executes one action of the client machine (the runner calls it in order). */
  exec(action: ClientAction): void {
    switch (action.type) {
      case "armDeadline":
        this.arm(action.params.phase);
        return;
      case "clearDeadline":
        this.deps.deadlines.clear(this, action.params.phase);
        return;
      case "refuseEncryption":
        this.socket.write(SSL_REFUSE);
        return;
      case "acceptTls":
        return void this.acceptTls().catch((e: unknown) => this.internalError(e));
      case "forwardCancel":
        return void this.forwardCancel();
      case "authenticate":
        this.authenticate();
        return;
      case "sendAuthOk":
        // Sent with what follows it (the startup answer, or the error that ends the login): one
        // write instead of two per connection.
        this.authOkDue = true;
        return;
      case "connectServer":
        return void this.connectServer();
      case "startRelay":
        this.startRelay();
        return;
      case "sendError":
        this.sendError(action.params.error);
        return;
      case "cancelQuery":
        void this.server?.cancel();
        return;
      case "stopReading":
        this.stopReading();
        return;
      case "closeClient":
        // After the current read's writes: a FATAL being relayed must reach the client first.
        queueMicrotask(() => {
          if (!this.clientGone) this.socket.end();
        });
        return;
      case "closeServer":
        this.releaseServer();
        return;
    }
  }

  /**
   * This client is done with its server leg: the pool keeps the connection if it is clean, and
   * closes it otherwise. A connection the pool closes is still waited for, like the client's own
   * leg; one it keeps is no longer this client's to destroy.
   */
  private releaseServer(): void {
    // Pinned session state would reach the next client: the connection is closed instead.
    if (this.link?.pinned === true) this.server?.close();
    this.link?.unlink();
    this.link = undefined;
    if (this.waiter !== undefined) {
      this.pool?.abandon(this.waiter);
      this.waiter = undefined;
    }
    const server = this.server;
    if (server === undefined) return;
    this.released(server, "clientClosed");
    this.pool!.release(server);
    const s = server.machine.state;
    if (s === "closing" || s === "closed") {
      // Not wanted again: this connection waits for it to close, like its own leg.
      this.server = server;
      server.whenLost(this);
    }
  }

  /** Link: the connection now holds `server` (pooled modes, per transaction). */
  attached(server: ServerConnection): void {
    this.server = server;
    this.requestedAt = Date.now();
    server.whenLost(this);
    this.serverBytesBefore = server.socket?.bytesRead ?? 0;
    if (this.deps.events === discardEvents) return;
    this.deps.events.emit({
      kind: "poolCheckout",
      conn: this.id,
      server: server.id,
      pool: `${this.pool!.database}/${this.pool!.role}`,
      mode: this.pool!.settings.mode,
      waitedMs: 0,
    });
  }

  /** The connection gave `server` back (or is about to): its bytes are counted, it is not ours. */
  released(server: ServerConnection, reason: "idle" | "clientClosed" | "error"): void {
    if (this.server !== server) return;
    server.whenLost(undefined);
    this.serverBytes += (server.socket?.bytesRead ?? this.serverBytesBefore) - this.serverBytesBefore;
    this.server = undefined;
    if (this.deps.events === discardEvents) return;
    this.deps.events.emit({
      kind: "poolRelease",
      conn: this.id,
      server: server.id,
      pool: `${this.pool!.database}/${this.pool!.role}`,
      reason,
    });
  }

  /** Ends the session with `error` as a FATAL: a pool timeout, a refused transaction block. */
  endWith(error: PgwardenError): void {
    if (this.machine.done || this.machine.in("violation") || this.machine.in("terminating")) return;
    this.deps.log.info({ conn: this.id, code: error.code }, error.message);
    this.failWith(Events.Timeout, error);
  }

  private serverBytesBefore = 0;
  private serverBytes = 0;

  private arm(phase: DeadlinePhase): void {
    if (phase === "session") {
      this.sessionStartedAt = this.lastActivityAt = Date.now();
      this.bytesSeen = this.transport.bytesRead;
      const period = sweepPeriodMs(this.deps.sessions.timers());
      if (period !== undefined) this.deps.deadlines.watch(this, period);
      return;
    }
    const ms = phase === "login" ? this.deps.auth.timeoutMs : this.deps.limits.lingerMs;
    this.deps.deadlines.arm(this, phase, ms);
  }

  /**
   * The idle and lifetime deadlines, checked when the shared sweep visits. Activity is sampled
   * from the bytes read, not tracked per message (the relay stays as it is): see visitSession.
   */
  private checkSession(): void {
    const timers = this.deps.sessions.timers();
    const now = Date.now();
    const { sample, action: next } = visitSession(
      timers,
      this.sessionStartedAt,
      { lastActivityAt: this.lastActivityAt, bytesSeen: this.bytesSeen },
      now,
      this.transport.bytesRead,
      !this.machine.state.startsWith("ready"),
    );
    this.lastActivityAt = sample.lastActivityAt;
    this.bytesSeen = sample.bytesSeen;
    if (next.kind === "end") {
      const idle = next.deadline.kind === "idle";
      const error = sessionEndError(next.deadline.kind, timers);
      this.deps.log.info({ conn: this.id, user: this.user, code: error.code }, error.message);
      this.deps.events.emit({
        kind: "sessionControl",
        conn: this.id,
        control: idle ? "idleTimeout" : "maxLifetime",
        identity: this.user,
        source: this.raw.remoteAddress,
        limit: idle ? timers.idleTimeoutMs : timers.maxLifetimeMs,
      });
      this.failWith(Events.Timeout, error);
      return;
    }
    // A reload may have changed the timeouts: the sweep follows, or lets the session go.
    const period = sweepPeriodMs(timers);
    if (period === undefined) this.deps.deadlines.unwatch(this);
    else this.deps.deadlines.watch(this, period);
  }

  /** A deadline passed: the login one ends the connection, the linger destroys both sockets. */
  onDeadline(phase: DeadlinePhase): void {
    if (phase === "linger") {
      this.destroy();
      return;
    }
    if (phase === "session") {
      if (this.machine.in("ready") || this.machine.in("busy")) this.checkSession();
      return;
    }
    if (this.deps.log.isLevelEnabled("warn"))
      this.deps.log.warn({ conn: this.id, state: this.machine.state }, "login deadline passed");
    this.machine.send(Events.Timeout);
  }

  private sendError(which: FinalError): void {
    if (this.errorSent || this.clientGone || !this.socket.writable) return;
    // An ErrorResponse inside a torn message would be read as its rest: the close says it instead.
    if (this.link?.clientMidMessage === true) {
      this.errorSent = true;
      return;
    }
    const e =
      which === "given"
        ? (this.finalError ?? protocolError("protocol violation"))
        : which === "adminShutdown"
          ? adminShutdown
          : which === "connectionLost"
            ? connectionLost
            : loginTimeout;
    this.errorSent = true;
    const error = encodeError({
      severity: "FATAL",
      code: e.sqlstate,
      message: e.message,
      ...(e.detail === undefined ? {} : { detail: e.detail }),
    });
    this.socket.write(this.authOkDue ? Buffer.concat([this.takeAuthOk()!, error]) : error);
  }

  /** AuthenticationOk, once, if the machine has sent it and it has not gone out yet. */
  private takeAuthOk(): Buffer | undefined {
    if (!this.authOkDue) return undefined;
    this.authOkDue = false;
    return AUTH_OK;
  }

  private authOkDue = false;

  private stopReading(): void {
    const c = this.socket;
    this.first?.stop();
    this.stream?.abandon();
    this.link?.unlink();
    c.pause();
  }

  /** Ends the connection on a violation: `error` is what the client is told (08P01, mostly). */
  violation(error: PgwardenError): void {
    if (this.machine.in("violation") || this.machine.in("terminating") || this.machine.done) return;
    this.finalError = error;
    if (this.deps.log.isLevelEnabled("warn"))
      this.deps.log.warn({ conn: this.id, code: error.code, reason: error.message }, "protocol violation");
    this.machine.send(Events.ProtocolViolation);
  }

  /** Ends the connection with `error` through `event` (whose transition sends the given error). */
  failWith(event: (typeof Events)[keyof typeof Events], error: PgwardenError): void {
    this.finalError = error;
    this.machine.send(event);
  }

  // First packet -----------------------------------------------------------------------------------

  /** The first-packet step saw SSLRequest or a direct-TLS ClientHello, with TLS on offer. */
  tlsRequested(negotiation: "ssl-request" | "direct", buffered: Buffer): void {
    this.first = undefined;
    this.tlsRequest = { negotiation, buffered };
    this.machine.send(negotiation === "direct" ? Events.DirectTLSAvailable : Events.SSLRequestTls);
  }

  /**
   * `S` (for SSLRequest) and the handshake on the same socket. The handshake's own timer takes the
   * rest of the login deadline, so a stalled handshake ends as PGW_TLS_TIMEOUT, logged once; the
   * login deadline resumes with what is left once TLS is up.
   */
  private async acceptTls(): Promise<void> {
    const request = this.tlsRequest!;
    this.tlsRequest = undefined;
    const tls = this.deps.tls!;
    const loginLeft = () => this.deps.auth.timeoutMs - (Date.now() - this.openedAt);
    this.deps.deadlines.clear(this, "login");
    const outcome = await startTlsOnSocket(this.raw, {
      context: tls.context(),
      negotiation: request.negotiation,
      buffered: request.buffered,
      requestCert: tls.requestCert,
      handshakeTimeoutMs: Math.max(1, Math.min(tls.handshakeTimeoutMs, loginLeft())),
    });
    const log = this.deps.log;
    if (isPgwardenError(outcome)) {
      // A shutdown or the client's close ended the connection first: no refusal of ours to report.
      const ours = this.machine.in("tls") && outcome.code !== "PGW_TLS_CLOSED";
      if (ours ? log.isLevelEnabled("warn") : log.isLevelEnabled("info"))
        log[ours ? "warn" : "info"](
          { conn: this.id, code: outcome.code, reason: outcome.message },
          "TLS handshake failed",
        );
      this.deps.events.emit({
        kind: "tlsHandshake",
        conn: this.id,
        negotiation: request.negotiation,
        ok: false,
        reason: outcome.message,
      });
      this.machine.send(Events.TlsFailed);
      return;
    }
    if (!this.machine.in("tls")) {
      // A shutdown came first.
      outcome.socket.destroy();
      return;
    }
    this.deps.deadlines.arm(this, "login", Math.max(0, loginLeft()));
    this.useTransport(outcome);
    const fingerprint = outcome.peer?.fingerprint256;
    if (log.isLevelEnabled("info"))
      log.info(
        { conn: this.id, protocol: outcome.protocol, cipher: outcome.cipher, client: fingerprint },
        "TLS established",
      );
    this.deps.events.emit({
      kind: "tlsHandshake",
      conn: this.id,
      negotiation: request.negotiation,
      ok: true,
      protocol: outcome.protocol,
      cipher: outcome.cipher,
      ...(fingerprint === undefined ? {} : { clientCertificate: fingerprint }),
      ...(outcome.peer === undefined ? {} : { clientSubject: outcome.peer.subject }),
    });
    this.machine.send(Events.TlsEstablished);
    this.first = new FirstPacket(this.transport, this);
    this.first.start();
  }

  /** Everything from here on — first packet, authentication, Link — reads and writes the TLS socket. */
  private useTransport(session: TlsSession): void {
    this.tlsSession = session;
    const s = session.socket;
    own(s, this);
    this.transport = s;
  }

  /** The first-packet step ended: with the startup packet, or with a cancel request. */
  firstPacketDone(outcome: FirstPacketOutcome): void {
    this.first = undefined;
    if (outcome.kind === "cancel") {
      this.cancelPacket = outcome.cancel;
      this.machine.send(Events.CancelRequest);
      return;
    }
    this.startup = outcome.startup;
    this.leftover = outcome.leftover;
    this.machine.send(Events.Startup);
  }

  /** A first packet PostgreSQL drops without a word, or (protocol 2) answers in protocol 2's format. */
  rejectFirstPacket(e: PgwardenError): void {
    this.first = undefined;
    if (this.deps.log.isLevelEnabled("info"))
      this.deps.log.info({ conn: this.id, code: e.code, reason: e.message }, "invalid first packet");
    // A protocol 2 client cannot read a v3 ErrorResponse: it gets protocol 2's, then the close.
    if (e.code === "PGW_UNSUPPORTED_PROTOCOL_V2") this.socket.write(encodeV2Error(e.message));
    this.machine.send(Events.StartupInvalid);
  }

  private cancelPacket: CancelPacket | undefined;

  private async forwardCancel(): Promise<void> {
    const p = this.cancelPacket!;
    this.cancelPacket = undefined;
    if (this.deps.admission.admitCancel()) {
      this.admitted = "cancel";
      const target = this.deps.cancels.find(p.processId, p.secret);
      if (target !== undefined) await target.cancel().catch(() => {});
    } else this.deps.log.warn({ conn: this.id }, "cancel request dropped: too many cancel connections");
    this.machine.send(Events.CancelDone);
  }

  // Authentication ---------------------------------------------------------------------------------

  private authenticate(): void {
    const startup = this.startup!;
    this.startup = undefined;
    // Before any credential is read: with tls.mode require, plaintext goes no further.
    if (this.deps.tls?.mode === "require" && this.tlsSession === undefined) {
      this.deps.log.warn({ conn: this.id }, "connection refused: TLS is required");
      this.failWith(Events.ClientAuthFailed, tlsRequired);
      return;
    }

    if (!this.deps.admission.admitClient()) {
      this.deps.log.warn({ conn: this.id }, "connection refused: too many clients");
      this.failWith(Events.ClientAuthFailed, tooManyClients);
      return;
    }
    this.admitted = "client";
    void this.runAuthentication(startup).catch((e: unknown) => this.internalError(e));
  }

  private async runAuthentication(startup: StartupPacket): Promise<void> {
    const params = startup.parameters;
    const log = this.deps.log;
    const user = params.get("user");
    if (user === undefined || user === "") {
      return this.failWith(
        Events.ClientAuthFailed,
        pgwardenError(
          "PGW_AUTH_FAILED",
          SqlState.invalidAuthorization,
          "no PostgreSQL user name specified in startup packet",
        ),
      );
    }
    const database = params.get("database") || user;
    this.user = user;
    this.database = database;
    log.info({ conn: this.id, user, database, application: params.get("application_name") }, "startup");

    // Access rules, before any credential is read: who may try which method from where.
    const ruleMethod = this.decideAccess(user, database);
    if (isPgwardenError(ruleMethod)) {
      this.failWith(Events.ClientAuthFailed, ruleMethod);
      return;
    }
    const password = ruleMethod === "scram-sha-256" || ruleMethod === "cert+scram";
    if (password && this.tlsSession === undefined && !this.deps.auth.allowPasswordOverPlaintext) {
      log.warn({ conn: this.id }, "connection refused: password over plaintext");
      return this.failWith(Events.ClientAuthFailed, passwordOverPlaintext);
    }

    // The startup boundary, before any credential is read: what may go upstream.
    const filtered = filterStartupParameters(this.deps.startup, params);
    if (isPgwardenError(filtered)) {
      log.warn({ conn: this.id, user, reason: filtered.message }, "startup refused");
      return this.failWith(Events.ClientAuthFailed, filtered);
    }
    if (filtered.dropped.length > 0)
      log.info({ conn: this.id, dropped: filtered.dropped }, "startup parameters not forwarded");

    // pgwarden speaks 3.0 and 3.2 to clients and supports no `_pq_` protocol options yet.
    const options = [...params.keys()].filter((k) => k.startsWith("_pq_."));
    this.minor = startup.minor >= 2 ? 2 : 0;
    // As PostgreSQL does: negotiate only for a newer minor than ours or for unknown options.
    if (options.length > 0 || startup.minor > 2) {
      this.socket.write(
        encodeNegotiateProtocolVersion({ newestVersion: (3 << 16) | this.minor, unrecognized: options }),
      );
    }

    const stream = new MessageStream(
      this.socket,
      clientAuthPolicy(this.deps.limits.maxMessageBytes),
      this.leftover,
      clientSessionTypes,
    );
    this.leftover = undefined;
    this.stream = stream;
    this.socket.resume();
    // `cert` was proven by the handshake; only password methods run an exchange.
    const method = password ? "scram-sha-256" : "trust";
    this.deps.events.emit({ kind: "authAttempt", conn: this.id, method, user });
    const outcome = await authenticateClient(stream, {
      method,
      user,
      verifier: this.deps.users().get(user),
      mockSecret: this.deps.mockSecret,
      mockIterations: this.deps.mockIterations(),
      channelBinding: this.channelBinding(),
      send: (m) => {
        if (this.machine.in("authenticating.client")) this.socket.write(m);
      },
      check: (m) => {
        const state = this.machine.state;
        if (state !== "authenticating.client") return "abandoned";
        if (this.machine.sendUnlessViolation(clientEvents[m[0]!]!)) return undefined;
        return protocolError(
          `expected an authentication response, got ${frontendName(m[0]!)} in state ${state}`,
        );
      },
    });
    if (!this.machine.in("authenticating.client")) return;
    switch (outcome.kind) {
      case "closed":
        return;
      case "violation":
        return this.violation(outcome.error);
      case "failed":
        this.deps.events.emit({
          kind: "authFailure",
          conn: this.id,
          method,
          user,
          reason: outcome.reason ?? outcome.error.message,
          sqlstate: outcome.error.sqlstate,
        });
        log.warn(
          { conn: this.id, user, reason: outcome.reason ?? outcome.error.message },
          "client authentication failed",
        );
        return this.failWith(Events.ClientAuthFailed, outcome.error);
      case "ok":
        this.deps.events.emit({ kind: "authSuccess", conn: this.id, method, user });
        log.info(
          {
            conn: this.id,
            user,
            method: ruleMethod,
            mechanism: outcome.mechanism,
            transport: this.transportKind,
          },
          "client authenticated",
        );
    }
    // The admin console is its own destination, for listed identities only.
    const route = routeAdmin(this.deps.admin.config, user, database);
    if (route !== "upstream") {
      this.deps.events.emit({
        kind: "accessDecision",
        conn: this.id,
        decision: route === "admin" ? "allow" : "deny",
        rule: "admin.identities",
        database,
        role: undefined,
        reason: isPgwardenError(route) ? route.message : undefined,
      });
      if (isPgwardenError(route)) {
        log.warn({ conn: this.id, user, database }, "admin console refused");
        return this.failWith(Events.ClientAuthFailed, route);
      }
      // A console session is a session of its identity and source like any other (AC-10).
      if (!this.takeLease(user)) return;
      const pending = stream.handOff();
      this.stream = undefined;
      if (isPgwardenError(pending)) return this.violation(pending);
      this.admin = { pending: pending.length === 0 ? undefined : Buffer.concat(pending) };
      this.socket.pause();
      this.machine.send(Events.ClientAuthOk);
      return;
    }
    // Grants are decided once the identity is proven: before that, an answer that depends on them
    // would tell an unauthenticated client which identities have access to what.
    const destination = resolveGrant(this.deps.grants, user, database);
    const grantIndex = this.deps.grants.grants.findIndex((g) => g.identity === user || g.identity === "*");
    this.deps.events.emit({
      kind: "accessDecision",
      conn: this.id,
      decision: isPgwardenError(destination) ? "deny" : "allow",
      rule: grantIndex < 0 ? "access.grants: none matches" : `access.grants[${grantIndex}]`,
      database,
      role: isPgwardenError(destination) ? undefined : destination.role,
      reason: isPgwardenError(destination) ? destination.message : undefined,
    });
    if (isPgwardenError(destination)) {
      log.warn({ conn: this.id, user, database, reason: destination.message }, "access denied");
      return this.failWith(Events.ClientAuthFailed, destination);
    }
    this.destination = destination;
    this.upstreamParameters = new Map([
      ["user", destination.role],
      ["database", destination.database],
      ...filtered.parameters,
    ]);
    if (!this.takeLease(user)) return;
    const pending = stream.handOff();
    this.stream = undefined;
    if (isPgwardenError(pending)) {
      this.violation(pending);
      return;
    }
    this.clientPending = pending;
    // Whatever the client sends before ReadyForQuery waits in the socket.
    this.socket.pause();
    this.machine.send(Events.ClientAuthOk);
  }

  /**
   * AC-10: the identity's and the source's session lease, taken once the identity is proven and
   * given back when the session ends. False: refused, and the connection is ending.
   */
  private takeLease(user: string): boolean {
    const source = this.raw.remoteAddress;
    const lease = this.deps.sessions.counter.tryAcquire(user, source);
    if (!isSessionRefusal(lease)) {
      this.lease = lease;
      return true;
    }
    const error = sessionLimitError(lease, user, source);
    this.deps.log.warn({ conn: this.id, user, source, limit: lease.limit }, error.message);
    this.deps.events.emit({
      kind: "sessionControl",
      conn: this.id,
      control: lease.refused === "identity" ? "maxPerIdentity" : "maxPerSource",
      identity: user,
      source,
      limit: lease.limit,
    });
    this.failWith(Events.ClientAuthFailed, error);
    return false;
  }

  /**
   * The ordered access rules decide from source, transport, identity and database; on mtls the
   * identity is the certificate's mapped one, and the startup user must be it. The decision and
   * its rule go to the log and the event sink; the client is told only that access is denied.
   */
  private decideAccess(user: string, database: string): RuleMethod | PgwardenError {
    const { policy, certs } = this.deps.access();
    const log = this.deps.log;
    const transport = this.transportKind;
    if (transport === "mtls") {
      const mapped = certs.map(this.tlsSession!.socket.getPeerCertificate());
      log.info({ conn: this.id, user, mapped: mapped?.identity }, describeCertIdentity(mapped));
      if (mapped === undefined || mapped.identity !== user) return certificateRefused(user);
    }
    const request = { source: this.raw.remoteAddress, transport, identity: user, database };
    const decision = policy.decide(request);
    const verdict = decision.action === "allow" ? decision.method : accessDeniedError(request);
    // Rejections are warnings, like every other refusal; allowed logins are info. The decision's
    // text is built only for a reader: with that level off and audit off, a login costs none.
    const level = decision.action === "allow" ? "info" : "warn";
    const logged = log.isLevelEnabled(level);
    if (!logged && this.deps.events === discardEvents) return verdict;
    const text = describeDecision(decision, request);
    if (logged) log[level]({ conn: this.id, rule: decision.rule, action: decision.action }, text);
    this.deps.events.emit({
      kind: "accessRule",
      conn: this.id,
      action: decision.action,
      rule: decision.rule,
      index: decision.index,
      method: decision.action === "allow" ? decision.method : undefined,
      identity: user,
      database,
      source: request.source,
      transport,
      text,
    });
    return verdict;
  }

  /** RFC 5929 tls-server-end-point of the certificate this leg presented; none on plaintext. */
  private channelBinding(): ScramChannelBinding | undefined {
    const der = this.tlsSession?.localCertificate;
    if (der === undefined) return undefined;
    const data = tlsServerEndPoint(der);
    // A certificate with no defined end-point hash (Ed25519) simply gets no -PLUS offer.
    return Buffer.isBuffer(data) ? { type: TLS_SERVER_END_POINT, data } : undefined;
  }

  private upstreamParameters: Map<string, string> | undefined;
  /** What the client sent ahead of its session; the shared empty list otherwise (idle clients hold no array). */
  private clientPending: readonly Buffer[] = NOTHING_PENDING;

  // Server half --------------------------------------------------------------------------------------

  private pool: Pool | undefined;
  private waiter: Waiter | undefined;
  /** The client's own session settings: defaults, then its startup packet, then its SETs. */
  private sessionState: SessionState | undefined;

  /** An admin console session instead of an upstream one, with what the client sent ahead. */
  private admin: { pending: Buffer | undefined } | undefined;

  /** A server connection from the pool for (database, role): idle, new, or after a wait. */
  private connectServer(): void {
    if (this.admin !== undefined) {
      this.machine.send(Events.UpstreamReady);
      return;
    }
    this.waitingSince = Date.now();
    const parameters = this.upstreamParameters!;
    this.upstreamParameters = undefined;
    const destination = this.destination!;
    const pool = this.deps.pool.poolFor(destination.database, destination.role, this.user!);
    const max = pool.settings.maxClients;
    if (max > 0 && pool.clients >= max) {
      this.deps.log.warn({ conn: this.id, pool: pool.key, limit: max }, poolFull.message);
      this.failWith(Events.UpstreamFailed, poolFull);
      return;
    }
    pool.clients++;
    this.pool = pool;
    if (pool.settings.mode !== "session" && pool.defaults !== undefined) {
      // Pooled modes answer the startup from what the pool's logins reported, with the client's own
      // settings over them: no server connection is taken until the client asks for something.
      const { state, report } = pool.startup(parameters, pool.defaults);
      this.sessionState = state;
      this.serverReady = {
        pid: undefined,
        startupMessages: [report],
        method: "",
        tlsProtocol: undefined,
      };
      this.machine.send(Events.UpstreamReady);
      return;
    }
    const session = pool.settings.mode === "session";
    const waiter: Waiter = {
      ...(session ? { login: { key: loginKeyOf(parameters), parameters: forwarded(parameters) } } : {}),
      granted: (server, waitedMs) => {
        if (this.waiter !== waiter) {
          pool.release(server);
          return;
        }
        this.waiter = undefined;
        void this.serverGranted(server, parameters, waitedMs).catch((e: unknown) => {
          pool.release(server);
          this.internalError(e);
        });
      },
      failed: (error) => {
        if (this.waiter !== waiter) return;
        this.waiter = undefined;
        if (!this.machine.in("authenticating.upstream")) return;
        this.deps.log.warn(
          { conn: this.id, code: error.code, reason: error.message },
          "no server connection",
        );
        this.failWith(Events.UpstreamFailed, error);
      },
    };
    this.waiter = waiter;
    pool.acquire(waiter);
  }

  /** The first server connection: the client's startup settings onto it, then ReadyForQuery. */
  private async serverGranted(
    server: ServerConnection,
    parameters: ReadonlyMap<string, string>,
    waitedMs: number,
  ): Promise<void> {
    const pool = this.pool!;
    if (!this.machine.in("authenticating.upstream")) {
      pool.release(server);
      return;
    }
    // Session mode: the connection was logged in with this client's startup settings.
    let state: SessionState;
    if (pool.settings.mode === "session") {
      state = new SessionState();
      state.adoptFrom(server.settings);
    } else state = pool.startupSettings(parameters, server.reported);
    let replayed = true;
    for (const sql of replayQueries(state.current, server.settings.current)) {
      replayed = await server.run(sql, pool.settings.serverConnectTimeoutMs);
      if (!replayed) break;
    }
    if (!replayed) {
      server.close();
      pool.release(server);
      this.deps.log.warn({ conn: this.id, server: server.id }, "startup settings refused by PostgreSQL");
      return this.failWith(Events.UpstreamFailed, settingsRefused(server.runError));
    }
    if (!this.machine.in("authenticating.upstream")) {
      pool.release(server);
      return;
    }
    server.settings.adoptFrom(state);
    this.sessionState = state;
    this.attached(server);
    this.deps.log.info(
      { conn: this.id, server: server.id, waitedMs, pool: pool.key },
      "server connection assigned",
    );
    this.serverReady = {
      pid: server.pid,
      startupMessages: [server.reportedMessages],
      method: server.method,
      tlsProtocol: server.tlsProtocol,
    };
    this.machine.send(Events.UpstreamReady);
  }

  /** What the client is told at the end of its startup: from the server it got, or the pool's defaults. */
  private serverReady:
    | {
        readonly pid: number | undefined;
        readonly startupMessages: readonly Uint8Array[];
        readonly method: string;
        readonly tlsProtocol: string | undefined;
      }
    | undefined;

  private startRelay(): void {
    if (this.admin !== undefined) {
      this.startAdmin(this.admin.pending);
      return;
    }
    const upstream = this.serverReady!;
    this.serverReady = undefined;
    const pool = this.pool!;
    const pooledMode = pool.settings.mode !== "session";
    // Session mode hands out the backend's PID; pooled modes a pgwarden one, as no backend is the client's.
    this.clientKey = pooledMode
      ? this.deps.cancels.issuePooled(this.minor, this)
      : this.deps.cancels.issue(upstream.pid!, this.minor, this);
    const link = new Link(this, this.server!, {
      maxMessageBytes: this.deps.limits.maxMessageBytes,
      maxBuffered: this.deps.limits.maxBufferedBytesPerConnection,
      events: this.deps.events,
      ...(pooledMode ? { pooled: pooledSession(pool, this.deps.pooling), state: this.sessionState! } : {}),
    });
    this.link = link;
    if (this.deps.log.isLevelEnabled("info"))
      this.deps.log.info(
        {
          conn: this.id,
          pid: upstream.pid,
          upstreamAuth: upstream.method,
          upstreamTls: upstream.tlsProtocol,
        },
        "session ready",
      );
    const pending = this.clientPending;
    this.clientPending = NOTHING_PENDING;
    const authOk = this.takeAuthOk();
    const reply = [
      ...(authOk === undefined ? [] : [authOk]),
      ...upstream.startupMessages,
      encodeBackendKeyData(this.deps.cancels.keyData(this.clientKey)),
      READY_IDLE,
    ];
    link.start({
      // One buffer, one write: a socket write per message was a tenth of a login's CPU.
      toClient: [Buffer.concat(reply)],
      serverPending: [],
      clientPending: pending,
    });
  }

  /** The console answers on the client socket; the machine stays ready until the client leaves. */
  private startAdmin(pending: Buffer | undefined): void {
    this.clientKey = this.deps.cancels.issuePooled(this.minor, this);
    this.deps.log.info({ conn: this.id, user: this.user }, "admin console session");
    const authOk = this.takeAuthOk();
    if (authOk !== undefined) this.socket.write(authOk);
    this.socket.resume();
    void serveAdmin(this.socket, this.deps.admin.source(), {
      maxMessageBytes: this.deps.limits.maxMessageBytes,
      log: this.deps.log,
      pending,
      backendKey: this.deps.cancels.keyData(this.clientKey),
      idleTimeoutMs: this.deps.sessions.timers().idleTimeoutMs,
    });
  }

  /** CancelRequest for this connection's running query (Cancellable). */
  cancel(): Promise<void> {
    // Between transactions a pooled client runs nothing: the cancel cancels nothing.
    const server = this.link?.server;
    if (server === undefined) return Promise.resolve();
    this.deps.log.info({ conn: this.id, server: server.id }, "cancel request forwarded");
    return server.cancel();
  }

  // Endings ------------------------------------------------------------------------------------------

  /** SocketOwner: what the client socket reads goes to the link (which turns the relay on and off). */
  socketData(chunk: Buffer): void {
    this.link?.onClientData(chunk);
  }

  /** SocketOwner: a client socket's error (its close follows). */
  socketError(e: Error): void {
    this.deps.log.debug({ conn: this.id, err: e.message }, "client socket error");
  }

  /** SocketOwner: a client socket closed (the TCP socket and the TLS socket on it both report it). */
  socketClosed(): void {
    if (this.clientGone) return;
    this.clientGone = true;
    if (!this.machine.done) this.machine.send(Events.ClientClosed);
    this.settle();
  }

  /** The server leg is gone (ServerConnection tells its listener). */
  onServerLost(): void {
    this.machine.send(Events.ServerClosed);
    this.settle();
  }

  /** A failure in pgwarden's own code ends this connection, never the process. */
  internalError(e: unknown): void {
    this.deps.log.error({ conn: this.id, err: e instanceof Error ? e.stack : String(e) }, "internal error");
    this.violation(pgwardenError("PGW_INTERNAL", SqlState.internalError, "internal error in pgwarden"));
  }

  /** Once both legs are closed: the machine is final, slots and keys are given back. */
  private settle(): void {
    if (!this.clientGone) return;
    const server = this.server;
    if (server !== undefined && !server.machine.done) return;
    if (this.machine.done) return;
    this.machine.send(Events.Closed);
    if (!this.machine.done) return;
    this.deps.deadlines.clearAll(this);
    if (this.clientKey !== undefined) this.deps.cancels.revoke(this.clientKey);
    this.lease?.release();
    this.lease = undefined;
    if (this.pool !== undefined) this.pool.clients--;
    this.pool = undefined;
    if (this.admitted === "client") this.deps.admission.releaseClient();
    else if (this.admitted === "cancel") this.deps.admission.releaseCancel();
    this.admitted = undefined;
    const summary = {
      conn: this.id,
      ms: Date.now() - this.openedAt,
      bytesFromClient: this.bytesFromClient,
      bytesFromServer: this.bytesFromServer,
    };
    this.deps.events.emit({
      kind: "connectionClosed",
      ...summary,
      bytesToClient: this.socket.bytesWritten,
      bytesToServer: this.server?.socket?.bytesWritten ?? 0,
      reason: this.finalError?.code ?? "closed",
      ...(this.finalError === undefined ? {} : { sqlstate: this.finalError.sqlstate }),
      user: this.user,
      database: this.database,
    });
    this.deps.log.info(summary, "client disconnected");
    this.isClosed = true;
    this.deps.live.delete(this.id);
    this.destroy();
    const listener = this.closedListener as ((arg: unknown) => void) | undefined;
    const arg = this.closedArg;
    this.closedListener = undefined;
    this.closedArg = undefined;
    listener?.(arg);
  }
}
