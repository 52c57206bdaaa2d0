import type { Socket } from "node:net";
import type {
  connectUpstream,
  sendCancel,
  Upstream,
  UpstreamCredentials,
  UpstreamTarget,
} from "../adapters/upstream.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import type { ServerAction } from "../machines/actions.ts";
import { ReadyForQuery } from "../machines/events.ts";
import { type ServerRunner, serverRunner, type TransitionListener } from "../machines/MachineRunner.ts";
import { ServerEvents } from "../machines/serverEvents.ts";
import { Owed, OwedResponses } from "../pool/OwedResponses.ts";
import type { BackendKeyData } from "../protocol/backend.ts";
import { encodeQuery, encodeTerminate } from "../protocol/frontend.ts";
import { DROP, MessageScanner } from "../protocol/MessageScanner.ts";
import { Backend } from "../protocol/messageTypes.ts";
import { serverSessionPolicy } from "../protocol/policies.ts";

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
export class ServerConnection {
  readonly id: string;
  readonly machine: ServerRunner;
  readonly owed = new OwedResponses();
  private readonly deps: ServerConnectionDeps;
  /** Abandons a login under way; dropped once logged in. */
  private abort: AbortController | undefined = new AbortController();
  socket: Socket | undefined;
  key: BackendKeyData | undefined;
  /** Settles when the socket has closed (or when no socket was ever opened). */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private onLost: ServerLossListener | undefined;
  /** What the login answered, kept for the next client a pool hands this connection to. */
  startupMessages: readonly Buffer[] = [];
  ready: Buffer | undefined;
  /** How the login authenticated and over what: kept for the next client, like the rest. */
  method = "";
  tlsProtocol: string | undefined;
  /** The pool this connection belongs to: (database, role, startup settings). */
  poolKey: string | undefined;

  constructor(id: string, deps: ServerConnectionDeps) {
    this.id = id;
    this.deps = deps;
    this.machine = serverRunner(id, deps.onTransition);
    this.machine.start(this);
    this.closed = new Promise((r) => {
      this.resolveClosed = r;
    });
  }

  /** The backend's PID once logged in: what session mode hands the client. */
  get pid(): number | undefined {
    return this.key?.processId;
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
    this.key = result.key;
    socket.on("error", () => {});
    socket.on("close", () => this.lost());
    if (this.machine.done || this.abort?.signal.aborted !== false) {
      // The client went away or the deadline passed while PostgreSQL was answering.
      socket.destroy();
      return {
        kind: "failed",
        error: pgwardenError("PGW_SHUTDOWN", SqlState.adminShutdown, "login abandoned"),
      };
    }
    this.abort = undefined;
    this.startupMessages = result.startupMessages;
    this.ready = result.ready;
    this.method = result.method;
    this.tlsProtocol = result.tlsProtocol;
    this.machine.send(ServerEvents.LoggedIn);
    return { kind: "ready", upstream: result };
  }

  /** Called once, when the socket has closed: the link hears of it through `onLost`. */
  private lost(): void {
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

  /**
   * Runs pgwarden's own reset query while no client is linked, swallowing its results; resolves
   * true once the connection is idle again (ReadyForQuery `I`), false if it is not reusable.
   */
  reset(sql: string): Promise<boolean> {
    const socket = this.socket;
    if (socket === undefined || !this.reusable) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        socket.off("data", onData);
        socket.off("close", onClose);
        resolve(ok);
      };
      const scanner = new MessageScanner(serverSessionPolicy(1_048_576), (type, msg) => {
        if (type !== Backend.ReadyForQuery) return DROP;
        this.owed.shift();
        const status = msg[5] === 0x49 ? "I" : msg[5] === 0x54 ? "T" : "E";
        this.machine.send(ReadyForQuery[status][this.owed.size > 0 ? 1 : 0]);
        done(this.machine.state === "idle");
        return DROP;
      });
      const sink: Uint8Array[] = [];
      const onData = (chunk: Buffer) => {
        const err = scanner.scan(chunk, sink);
        sink.length = 0;
        if (err !== undefined) done(false);
      };
      const onClose = () => done(false);
      socket.on("data", onData);
      socket.on("close", onClose);
      this.owed.push(Owed.skip);
      this.machine.send(ServerEvents.Reset);
      socket.resume();
      socket.write(encodeQuery(sql));
    });
  }

  /** Destroys the socket at once: the end of a linger. */
  destroy(): void {
    this.abort?.abort();
    this.socket?.destroy();
    if (this.socket === undefined) this.resolveClosed();
  }

  /** Cancels what the backend is running; resolves once PostgreSQL has closed the cancel connection. */
  cancel(): Promise<void> {
    if (this.key === undefined || this.machine.done) return Promise.resolve();
    return this.deps.sendCancel(this.deps.target, this.key);
  }
}
