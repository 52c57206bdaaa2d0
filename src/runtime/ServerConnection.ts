import type { Socket } from "node:net";
import type { Logger } from "pino";
import { READ_HELD, READ_WAITING, type ReadSink, sinkReads } from "../adapters/readBuffer.ts";
import type {
  connectUpstream,
  sendCancel,
  Upstream,
  UpstreamCredentials,
  UpstreamTarget,
} from "../adapters/upstream.ts";
import { clearArray } from "../clearArray.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import type { ServerAction } from "../machines/actions.ts";
import { ReadyForQuery } from "../machines/events.ts";
import { type ServerRunner, serverRunner, type TransitionListener } from "../machines/MachineRunner.ts";
import { ServerEvents } from "../machines/serverEvents.ts";
import { Owed, OwedResponses } from "../pool/OwedResponses.ts";
import type { Login } from "../pool/ServerPool.ts";
import { SessionState } from "../pool/SessionState.ts";
import { decodeParameterStatus } from "../protocol/backend.ts";
import { encodeQuery, encodeTerminate } from "../protocol/frontend.ts";
import { DROP, MessageScanner } from "../protocol/MessageScanner.ts";
import { Backend } from "../protocol/messageTypes.ts";
import { pooledServerSessionPolicy } from "../protocol/policies.ts";
import { encodeReported, type LoginReport, loginReport } from "./LoginReports.ts";
import { own, relayData, type SocketOwner } from "./socketOwner.ts";

/** What reads a server connection's bytes: a method, so the reader needs no closure of its own. */
export interface ServerReceiver {
  onServerData(chunk: Buffer): void;
  /** Whether something still refers to the chunk it was handed last (absent: nothing ever does). */
  holdsRead?(): boolean;
}

/** Who is told that a server connection has closed (its pool). */
export interface ServerClosedListener {
  serverClosed(server: ServerConnection): void;
}

const runPolicy = pooledServerSessionPolicy(1_048_576);
const NOTHING_REPORTED: ReadonlyMap<string, string> = new Map();

let serverCounter = 0;
/** Server connections have ids of their own: in pooled modes one serves many clients. */
const nextServerId = (): string => `s${(++serverCounter).toString(36)}`;

/**
 * What the client is told when PostgreSQL refuses pgwarden's login: the SQLSTATE, and words that
 * name nothing but what the client itself asked for (PostgreSQL's own name the service role) —
 * the database, or (22023) the startup setting and value it sent, in PostgreSQL's words.
 */
const refusalForClient = (sqlstate: string, reason: string, database: string): PgwardenError =>
  sqlstate === "3D000"
    ? pgwardenError("PGW_UPSTREAM_AUTH", sqlstate as SqlState, `database "${database}" does not exist`)
    : (settingRefusal(sqlstate, reason) ??
      pgwardenError(
        "PGW_UPSTREAM_AUTH",
        sqlstate as SqlState,
        `the database server refused the connection (SQLSTATE ${sqlstate})`,
      ));

/**
 * PostgreSQL's refusal of a startup setting's value (22023 `invalid value for parameter …`),
 * whose words name only the parameter and the value the client sent; undefined for any other.
 */
export const settingRefusal = (
  sqlstate: string | undefined,
  message: string | undefined,
): PgwardenError | undefined =>
  sqlstate === SqlState.invalidParameterValue && message?.startsWith("invalid value for parameter ") === true
    ? pgwardenError("PGW_UPSTREAM_AUTH", SqlState.invalidParameterValue, message)
    : undefined;

/**
 * How pools log in: as the pool's role to its database with no other startup setting, so that
 * RESET and DISCARD ALL return a connection to the role's defaults, never to another client's
 * startup values; each client's own settings are replayed onto it (SessionState).
 */
export const poolLogin =
  (deps: ServerConnectionDeps, log: Logger, timeoutMs: number): Login =>
  async (pool, settings) => {
    const server = new ServerConnection(nextServerId(), deps);
    server.poolKey = pool.key;
    server.loginKey = settings?.key;
    const timer = setTimeout(() => server.close(), timeoutMs);
    const outcome = await server
      .login(new Map([...(settings?.parameters ?? []), ["user", pool.role], ["database", pool.database]]))
      .catch(
        (e: unknown): LoginOutcome => ({
          kind: "failed",
          error: pgwardenError("PGW_INTERNAL", SqlState.internalError, String(e)),
        }),
      );
    clearTimeout(timer);
    switch (outcome.kind) {
      case "ready":
        log.info({ server: server.id, pool: pool.key, pid: server.pid }, "server connection logged in");
        return server;
      case "refused":
        log.warn(
          { pool: pool.key, sqlstate: outcome.sqlstate, reason: outcome.reason },
          "PostgreSQL refused the login",
        );
        return refusalForClient(outcome.sqlstate, outcome.reason, pool.database);
      case "failed":
        log.warn(
          { pool: pool.key, code: outcome.error.code, reason: outcome.error.message },
          "upstream login failed",
        );
        return outcome.error;
    }
  };

/** Who is told when the server leg is gone: the linked client, or the pool holding it. */
export interface ServerLossListener {
  onServerLost(server: ServerConnection): void;
}

export interface ServerConnectionDeps {
  readonly target: UpstreamTarget;
  readonly credentials: UpstreamCredentials | undefined;
  readonly connectUpstream: typeof connectUpstream;
  readonly sendCancel: typeof sendCancel;
  readonly onTransition: TransitionListener | undefined;
}

/** How a login ended, for the client half to act on. */
export type LoginOutcome =
  | { readonly kind: "ready"; readonly upstream: Upstream }
  /** PostgreSQL refused; its words are for pgwarden's log, the client gets only the SQLSTATE. */
  | { readonly kind: "refused"; readonly sqlstate: string; readonly reason: string }
  | { readonly kind: "failed"; readonly error: PgwardenError };

/**
 * pgwarden's leg to PostgreSQL: connect and log in, the server machine, and the record of the
 * responses the connection still owes. It knows nothing of clients; a Link joins it to one.
 * The pooling issue keeps these in pools and links them to a client per transaction.
 */
export class ServerConnection implements SocketOwner, ReadSink {
  readonly id: string;
  readonly machine: ServerRunner;
  readonly owed = new OwedResponses();
  private readonly deps: ServerConnectionDeps;
  /** Abandons a login under way; dropped once logged in. */
  private abort: AbortController | undefined = new AbortController();
  socket: Socket | undefined;
  /** The backend's PID, once logged in. */
  private backendPid: number | undefined;
  /**
   * Its cancel secret: the usual 4 bytes (protocol 3.0) as a number, since bytes of their own
   * would cost every idle server connection about 270 more; a longer secret (3.2) as bytes.
   */
  private cancelSecret: number | Buffer = 0;
  /**
   * Told once the socket has closed (or when no socket was ever opened). A field, not a promise:
   * every pooled connection would otherwise hold the promise, its resolver and the reaction.
   */
  private closedListener: ServerClosedListener | undefined;
  private isClosed = false;

  /** Tells `listener` once the connection has closed (now, if it has), after earlier listeners. */
  whenClosed(listener: ServerClosedListener): void {
    if (this.isClosed) {
      queueMicrotask(() => listener.serverClosed(this));
      return;
    }
    const before = this.closedListener;
    this.closedListener =
      before === undefined
        ? listener
        : {
            serverClosed: (s) => {
              before.serverClosed(s);
              listener.serverClosed(s);
            },
          };
  }

  /** The same as a promise, for callers that await it. */
  get closed(): Promise<void> {
    return new Promise((resolve) => this.whenClosed({ serverClosed: () => resolve() }));
  }

  /** Tells the listener a microtask later, as a promise would: never from inside a caller's loop. */
  private resolveClosed(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const listener = this.closedListener;
    this.closedListener = undefined;
    if (listener !== undefined) queueMicrotask(() => listener.serverClosed(this));
  }
  private onLost: ServerLossListener | undefined;
  /** How the login authenticated and over what: kept for the next client, like the rest. */
  method = "";
  tlsProtocol: string | undefined;
  /** The pool this connection belongs to: (database, role). */
  poolKey: string | undefined;
  /** Session mode: the startup settings it was logged in with (it serves only clients with the same). */
  loginKey: string | undefined;
  /** Every parameter PostgreSQL reported (ParameterStatus), as it stands now: what a new client is told. */
  get reported(): ReadonlyMap<string, string> {
    return this.ownReported ?? this.report?.reported ?? NOTHING_REPORTED;
  }
  /** What the login reported, shared with other connections' logins (LoginReports). */
  private report: LoginReport | undefined;
  /** This connection's own copy, made at the first ParameterStatus after its login. */
  private ownReported: Map<string, string> | undefined;

  /** What a client is told at its startup: every reported parameter as a ParameterStatus. */
  get reportedMessages(): Buffer {
    return this.ownReported === undefined && this.report !== undefined
      ? this.report.encoded
      : encodeReported(this.reported);
  }
  /** The session settings in force on the backend, as far as pgwarden knows them (pooled modes). */
  readonly settings = new SessionState();
  /** What the login left: DISCARD ALL returns the backend to these. */
  readonly loginSettings = new SessionState();
  readonly createdAt = Date.now();
  /** When the connection last went idle in its pool. */
  idleSince = 0;
  /** Cancels under way for whatever this connection ran: it serves nobody else until they finish. */
  cancelsInFlight = 0;
  private afterCancels: (() => void) | undefined;

  constructor(id: string, deps: ServerConnectionDeps) {
    this.id = id;
    this.deps = deps;
    this.machine = serverRunner(id, deps.onTransition);
    this.machine.start(this);
  }

  /** The backend's PID once logged in: what session mode hands the client. */
  get pid(): number | undefined {
    return this.backendPid;
  }

  /** Executes one action of the server machine. */
  exec(action: ServerAction): void {
    switch (action.type) {
      case "sendTerminate": {
        const s = this.socket;
        if (s?.writable) s.end(encodeTerminate());
        return;
      }
      case "offerRelease":
        // Session mode keeps its link for the client's life; the pooling issue takes it back here.
        return;
    }
  }

  /** Connects and logs in with the given startup parameters (user, database, allowlisted settings). */
  async login(parameters: ReadonlyMap<string, string>): Promise<LoginOutcome> {
    const result = await this.deps.connectUpstream({
      ...this.deps.target,
      parameters,
      credentials: this.deps.credentials,
      signal: this.abort!.signal,
      onConnected: () => this.machine.send(ServerEvents.Connected),
    });
    if (isPgwardenError(result)) {
      this.machine.send(ServerEvents.LoginFailed);
      this.resolveClosed();
      return { kind: "failed", error: result };
    }
    if ("_tag" in result) {
      this.machine.send(ServerEvents.LoginFailed);
      this.resolveClosed();
      return { kind: "refused", sqlstate: result.sqlstate, reason: result.message };
    }
    const socket = result.socket;
    this.socket = socket;
    this.backendPid = result.key.processId;
    const secret = result.key.secret;
    this.cancelSecret = secret.length === 4 ? secret.readUInt32BE(0) : secret;
    // One set of listeners for the connection's life; who reads is a field, so a checkout in
    // transaction mode swaps a reference instead of adding and removing socket listeners.
    own(socket, this);
    // A plain leg reads into one buffer of its own, handed straight to this connection; either
    // way it reads from now on, so that a close (or a FATAL) is seen while nobody is linked.
    if (sinkReads(socket, this)) socket.resume();
    else relayData(socket, true);
    if (this.machine.done || this.abort?.signal.aborted !== false) {
      // The client went away or the deadline passed while PostgreSQL was answering.
      socket.destroy();
      return {
        kind: "failed",
        error: pgwardenError("PGW_SHUTDOWN", SqlState.adminShutdown, "login abandoned"),
      };
    }
    this.abort = undefined;
    const report = loginReport(result.startupMessages);
    this.report = report;
    this.settings.adoptFrom(report.settings);
    this.loginSettings.adoptFrom(this.settings);
    this.method = result.method;
    this.tlsProtocol = result.tlsProtocol;
    this.machine.send(ServerEvents.LoggedIn);
    return { kind: "ready", upstream: result };
  }

  /** SocketOwner: what the socket read goes to the reader; with none, it ends an unclaimed connection. */
  socketData(chunk: Buffer): void {
    const r = this.receiver;
    if (r !== undefined) {
      r.onServerData(chunk);
      // Asked of the receiver that got the chunk: a pooled link may have let go of this
      // connection while its client still has the chunk queued.
      this.readHeld = r.holdsRead?.() === true;
    } else {
      this.readHeld = false;
      this.unclaimed();
    }
  }

  /** Whether the last chunk read is still referred to (queued for a client): see readBuffer.ts. */
  private readHeld = false;

  /** ReadSink: whether the last read is still referred to, and whether PostgreSQL owes anything. */
  afterRead(): number {
    return (this.readHeld ? READ_HELD : 0) | (this.owed.settled ? READ_WAITING : 0);
  }

  /** SocketOwner: errors end in a close, which is what the connection acts on. */
  socketError(): void {}

  /** SocketOwner, once: the socket has closed; the link hears of it through `onLost`. */
  socketClosed(): void {
    this.machine.send(ServerEvents.Lost);
    this.resolveClosed();
    this.onLost?.onServerLost(this);
  }

  /** The one listener told when the server leg is gone (the link, in session mode). */
  whenLost(listener: ServerLossListener | undefined): void {
    this.onLost = listener;
  }

  /** Ends the leg: Terminate, then PostgreSQL closes; abandons a login still under way. */
  close(): void {
    if (this.machine.done) return;
    if (this.socket === undefined) this.abort?.abort();
    this.machine.send(ServerEvents.Close);
  }

  /**
   * Whether a pool may keep this connection for another client: logged in, its socket open,
   * nothing owed and the last ReadyForQuery `I` — the server machine's `idle`.
   */
  get reusable(): boolean {
    return this.machine.state === "idle" && this.owed.settled && this.socket?.destroyed === false;
  }

  /** Records a ParameterStatus PostgreSQL sent, whoever it was relayed to. */
  noteParameter(msg: Buffer): void {
    const p = decodeParameterStatus(msg);
    if (typeof p === "object" && "name" in p) {
      this.ownReported ??= new Map(this.report?.reported);
      this.ownReported.set(p.name, p.value);
      this.settings.onParameterStatus(p.name, p.value);
    }
  }

  /** Session mode's reset query before another client gets the connection. */
  reset(sql: string, timeoutMs: number): Promise<boolean> {
    return this.run(sql, timeoutMs, ServerEvents.Reset);
  }

  /**
   * Runs a query of pgwarden's own while no client is linked (the reset query, a liveness check,
   * a client's settings before its turn), swallowing its results; resolves true once the
   * connection is idle again with no error, false if it is not reusable.
   */
  /** The ErrorResponse of the last `run` that failed with one. */
  runError: Buffer | undefined;

  run(
    sql: string,
    timeoutMs: number,
    event: typeof ServerEvents.Reset | typeof ServerEvents.Request = ServerEvents.Request,
  ): Promise<boolean> {
    const socket = this.socket;
    if (socket === undefined || !this.reusable) return Promise.resolve(false);
    return new Promise((resolve) => {
      let failed = false;
      let settled = false;
      const done = (ok: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (this.receiver === onData) this.receiver = undefined;
        socket.off("close", onClose);
        resolve(ok);
      };
      // A server that takes the query and never answers must not keep the connection for ever.
      const timer = setTimeout(() => {
        done(false);
        this.close();
      }, timeoutMs);
      const scanner = new MessageScanner(runPolicy, (type, msg) => {
        if (type === Backend.ErrorResponse) {
          failed = true;
          this.runError = Buffer.from(msg);
        } else if (type === Backend.ParameterStatus) this.noteParameter(msg);
        if (type !== Backend.ReadyForQuery) return DROP;
        this.owed.shift();
        const status = msg[5] === 0x49 ? "I" : msg[5] === 0x54 ? "T" : "E";
        this.machine.send(ReadyForQuery[status][this.owed.size > 0 ? 1 : 0]);
        done(!failed && this.machine.state === "idle");
        return DROP;
      });
      const sink: Uint8Array[] = [];
      const onData: ServerReceiver = {
        onServerData: (chunk) => {
          const err = scanner.scan(chunk, sink);
          clearArray(sink);
          if (err !== undefined) done(false);
        },
      };
      const onClose = () => done(false);
      this.receiver = onData;
      socket.on("close", onClose);
      this.owed.push(Owed.skip);
      this.machine.send(event);
      socket.resume();
      socket.write(encodeQuery(sql));
    });
  }

  /** Who reads the socket: the linked client's Link, or pgwarden's own query; none while pooled. */
  private receiver: ServerReceiver | undefined;

  /** The Link that now relays this connection's replies (undefined: it gives the connection back). */
  relayTo(receiver: ServerReceiver | undefined): void {
    this.receiver = receiver;
    if (receiver !== undefined) this.socket?.resume();
  }

  /**
   * Nobody reads (in its pool, between clients): anything PostgreSQL sends now (a FATAL before
   * a shutdown) retires the connection.
   */
  private unclaimed(): void {
    this.close();
  }

  /** A cancel for this connection's work starts; the pool holds the connection until it ends. */
  cancelStarted(): void {
    this.cancelsInFlight++;
  }

  cancelEnded(): void {
    if (--this.cancelsInFlight > 0) return;
    const next = this.afterCancels;
    this.afterCancels = undefined;
    next?.();
  }

  /** Runs `then` once no cancel is under way (at once when none is). */
  whenNoCancels(then: () => void): void {
    if (this.cancelsInFlight === 0) then();
    else this.afterCancels = then;
  }

  /** Destroys the socket at once: the end of a linger. */
  destroy(): void {
    this.abort?.abort();
    this.socket?.destroy();
    if (this.socket === undefined) this.resolveClosed();
  }

  /** The cancel secret's bytes, rebuilt from the number a 4-byte secret is kept as. */
  private secretBytes(): Buffer {
    const s = this.cancelSecret;
    if (typeof s !== "number") return s;
    const bytes = Buffer.allocUnsafe(4);
    bytes.writeUInt32BE(s, 0);
    return bytes;
  }

  /**
   * Cancels what the backend is running; resolves once PostgreSQL has closed the cancel
   * connection. Until then the connection serves no other client, so a late cancel cannot land
   * on someone else's statement (PostgreSQL ignores a cancel that reaches an idle backend).
   */
  async cancel(): Promise<void> {
    const processId = this.backendPid;
    if (processId === undefined || this.machine.done) return;
    this.cancelStarted();
    try {
      await this.deps.sendCancel(this.deps.target, { processId, secret: this.secretBytes() });
    } finally {
      this.cancelEnded();
    }
  }
}
