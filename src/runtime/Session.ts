import type { Socket } from "node:net";
import type { Logger } from "pino";
import { batchWrite } from "../adapters/batchWrite.ts";
import { MessageStream } from "../adapters/MessageStream.ts";
import type { connectUpstream, sendCancel, Upstream } from "../adapters/upstream.ts";
import type { ScramVerifier } from "../auth/scramVerifier.ts";
import { isPgwardenError, type PgwardenError, protocolError, SqlState } from "../errors.ts";
import { Events, ReadyForQuery } from "../machines/events.ts";
import { MachineRunner, type TransitionListener } from "../machines/MachineRunner.ts";
import {
  type BackendKeyData,
  encodeAuthentication,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
} from "../protocol/backend.ts";
import { encodeTerminate } from "../protocol/frontend.ts";
import { MessageScanner } from "../protocol/MessageScanner.ts";
import { Backend, frontendName } from "../protocol/messageTypes.ts";
import { clientAuthPolicy, clientSessionPolicy, serverSessionPolicy } from "../protocol/policies.ts";
import { decodeFirstPacket, type FirstPacket, firstPacketLength, SSL_REFUSE } from "../protocol/startup.ts";
import type { CancelRegistry } from "./CancelRegistry.ts";
import { authenticateClient } from "./clientAuth.ts";
import { clientEvents, isExtended, isSyncPoint } from "./clientEvents.ts";
import type { PgwardenConfig } from "./config.ts";

export interface SessionDeps {
  readonly config: PgwardenConfig;
  readonly users: () => ReadonlyMap<string, ScramVerifier>;
  /** Keys the mock SCRAM exchange for unknown users, so they look like wrong passwords. */
  readonly mockSecret: Buffer;
  readonly cancels: CancelRegistry;
  readonly log: Logger;
  readonly onTransition: TransitionListener | undefined;
  readonly connectUpstream: typeof connectUpstream;
  readonly sendCancel: typeof sendCancel;
}

type Startup = Extract<FirstPacket, { kind: "Startup" }>;

const STATUS: Record<number, "I" | "T" | "E"> = { 73: "I", 84: "T", 69: "E" };

/**
 * One client connection in session mode: first packet, client authentication, upstream login,
 * then a two-way relay in which control messages drive the connection machine and data
 * messages pass as untouched slices.
 */
export class Session {
  readonly id: string;
  readonly machine: MachineRunner;
  private readonly client: Socket;
  private readonly deps: SessionDeps;
  private readonly log: Logger;
  private server: Socket | undefined;
  private upstreamKey: BackendKeyData | undefined;
  private clientKey: BackendKeyData | undefined;
  private startBuf: Buffer | undefined;
  private startupTimer: NodeJS.Timeout | undefined;
  private minor = 0;
  /** ReadyForQuery messages the server still owes. */
  private outstanding = 0;
  /** Extended messages sent since the last sync point. */
  private unsynced = false;
  private serverSentFatal = false;
  private clientGone = false;
  private serverGone = false;
  private readonly toServer: Uint8Array[] = [];
  private readonly toClient: Uint8Array[] = [];
  private clientScanner: MessageScanner | undefined;
  private serverScanner: MessageScanner | undefined;
  private readonly openedAt = Date.now();
  bytesFromClient = 0;
  bytesFromServer = 0;
  user: string | undefined;
  database: string | undefined;
  private resolveClosed!: () => void;
  /** Settles once both sockets are closed. */
  readonly closed: Promise<void> = new Promise((r) => {
    this.resolveClosed = r;
  });

  constructor(id: string, client: Socket, deps: SessionDeps) {
    this.id = id;
    this.client = client;
    this.deps = deps;
    this.log = deps.log.child({ conn: id });
    this.machine = new MachineRunner(id, deps.onTransition);
  }

  /** The PostgreSQL backend's PID once logged in upstream. */
  get pid(): number | undefined {
    return this.upstreamKey?.processId;
  }

  start(): void {
    const c = this.client;
    c.setNoDelay(true);
    c.setKeepAlive(true);
    c.on("error", (e) => this.log.debug({ err: e.message }, "client socket error"));
    c.on("close", () => this.onClientGone());
    c.on("data", this.onStartupData);
    // A connection that never completes its first packet must not hold a slot (PostgreSQL's
    // authentication_timeout covers this phase too).
    this.startupTimer = setTimeout(() => {
      if (!this.machine.in("startup")) return;
      this.log.warn("incomplete startup packet: timed out");
      this.machine.send(Events.Timeout);
      this.client.destroy();
    }, this.deps.config.auth.timeoutMs);
    this.startupTimer.unref();
    this.log.info({ remote: `${c.remoteAddress}:${c.remotePort}` }, "client connected");
  }

  /** Ends the session for a shutdown: the client is told why, as PostgreSQL does. */
  shutdown(): void {
    if (this.machine.done || this.machine.in("terminating")) return;
    this.machine.send(Events.Shutdown);
    this.closeWith({
      severity: "FATAL",
      code: SqlState.adminShutdown,
      message: "terminating connection due to administrator command",
    });
  }

  // First packet -------------------------------------------------------------------------------

  private readonly onStartupData = (chunk: Buffer): void => {
    this.bytesFromClient += chunk.length;
    this.startBuf = this.startBuf === undefined ? chunk : Buffer.concat([this.startBuf, chunk]);
    for (;;) {
      const buf: Buffer = this.startBuf;
      const len = firstPacketLength(buf);
      if (len === "need-more") return;
      if (len === "direct-tls") {
        this.client.off("data", this.onStartupData);
        this.machine.send(Events.DirectTLS);
        this.log.warn("direct TLS attempted but TLS is not configured; closing");
        this.client.destroy();
        return;
      }
      if (isPgwardenError(len)) {
        this.violation(len);
        return;
      }
      if (buf.length < len) return;
      const packet = decodeFirstPacket(buf.subarray(0, len));
      const rest = buf.subarray(len);
      this.startBuf = rest;
      if (isPgwardenError(packet)) {
        this.violation(packet);
        return;
      }
      switch (packet.kind) {
        case "SSLRequest":
        case "GSSENCRequest":
          // No TLS on the client leg yet: refuse, and the client may go on in plaintext.
          this.machine.send(packet.kind === "SSLRequest" ? Events.SSLRequest : Events.GSSENCRequest);
          this.client.write(SSL_REFUSE);
          continue;
        case "DirectTLS":
          continue;
        case "CancelRequest":
          this.client.off("data", this.onStartupData);
          this.machine.send(Events.CancelRequest);
          this.deps.cancels.find(packet.processId, packet.secret)?.cancel();
          this.client.end();
          return;
        case "Startup":
          clearTimeout(this.startupTimer);
          this.client.off("data", this.onStartupData);
          this.startBuf = undefined;
          this.machine.send(Events.Startup);
          void this.authenticate(packet, rest);
          return;
      }
    }
  };

  // Authentication -----------------------------------------------------------------------------

  private async authenticate(startup: Startup, leftover: Buffer): Promise<void> {
    const params = startup.parameters;
    const user = params.get("user");
    if (user === undefined || user === "") {
      this.machine.send(Events.ClientAuthFailed);
      return this.closeWith({
        severity: "FATAL",
        code: SqlState.invalidAuthorization,
        message: "no PostgreSQL user name specified in startup packet",
      });
    }
    const database = params.get("database") || user;
    this.user = user;
    this.database = database;
    const log = this.log;
    log.info({ user, database, application: params.get("application_name") }, "startup");

    // pgwarden speaks 3.0 and 3.2 to clients and supports no `_pq_` protocol options yet.
    const options = [...params.keys()].filter((k) => k.startsWith("_pq_."));
    this.minor = startup.minor >= 2 ? 2 : 0;
    // As PostgreSQL does: negotiate only for a newer minor than ours or for unknown options.
    if (options.length > 0 || startup.minor > 2) {
      this.client.write(
        encodeNegotiateProtocolVersion({ newestVersion: (3 << 16) | this.minor, unrecognized: options }),
      );
    }

    const stream = new MessageStream(
      this.client,
      clientAuthPolicy(this.deps.config.limits.maxMessageBytes),
      leftover,
    );
    const { method, timeoutMs } = this.deps.config.auth;
    const outcome = await authenticateClient(stream, {
      method,
      timeoutMs,
      user,
      verifier: this.deps.users().get(user),
      mockSecret: this.deps.mockSecret,
      send: (m) => this.client.write(m),
      check: (m) => {
        const state = this.machine.state;
        if (this.machine.send(clientEvents[m[0]!]!) !== "violation") return undefined;
        return protocolError(
          `expected an authentication response, got ${frontendName(m[0]!)} in state ${state}`,
        );
      },
    });
    switch (outcome.kind) {
      case "closed":
        return;
      case "violation":
        return this.violation(outcome.error);
      case "timeout":
      case "failed": {
        if (outcome.kind === "failed")
          log.warn({ user, reason: outcome.error.message }, "client authentication failed");
        this.machine.send(outcome.kind === "timeout" ? Events.Timeout : Events.ClientAuthFailed);
        return this.closeWith({
          severity: "FATAL",
          code: outcome.error.sqlstate,
          message: outcome.error.message,
        });
      }
      case "ok":
        if (method !== "trust") log.info({ user }, "client authenticated");
    }
    this.machine.send(Events.ClientAuthOk);
    this.client.write(encodeAuthentication({ kind: "Ok" }));
    const pending = stream.handOff();
    if (isPgwardenError(pending)) return this.violation(pending);
    // Whatever the client sends before ReadyForQuery waits in the socket.
    this.client.pause();

    const upstream = await this.deps.connectUpstream({
      ...this.upstreamTarget(),
      parameters: this.upstreamParameters(params, user, database),
      password: this.deps.config.upstream.password,
    });
    if (this.clientGone) {
      if (!isPgwardenError(upstream) && !("_tag" in upstream)) upstream.socket.destroy();
      return;
    }
    if (isPgwardenError(upstream)) {
      log.warn({ code: upstream.code, reason: upstream.message }, "upstream login failed");
      this.machine.send(Events.UpstreamFailed);
      return this.closeWith({ severity: "FATAL", code: upstream.sqlstate, message: upstream.message });
    }
    if ("_tag" in upstream) {
      log.warn({ sqlstate: upstream.sqlstate, reason: upstream.message }, "PostgreSQL refused the login");
      this.machine.send(Events.UpstreamFailed);
      this.client.end(upstream.errorResponse);
      return;
    }
    this.beginRelay(upstream, pending);
  }

  private upstreamTarget() {
    const { host, port, connectTimeoutMs } = this.deps.config.upstream;
    return { host, port, connectTimeoutMs };
  }

  /** The client's settings go upstream; identity and database come from configuration when set. */
  private upstreamParameters(
    params: ReadonlyMap<string, string>,
    user: string,
    database: string,
  ): Map<string, string> {
    const up = this.deps.config.upstream;
    const out = new Map<string, string>([
      ["user", up.user ?? user],
      ["database", up.database ?? database],
    ]);
    for (const [k, v] of params)
      if (k !== "user" && k !== "database" && !k.startsWith("_pq_.")) out.set(k, v);
    return out;
  }

  // Relay ----------------------------------------------------------------------------------------

  private beginRelay(upstream: Upstream, clientPending: Buffer[]): void {
    const server = upstream.socket;
    this.server = server;
    this.upstreamKey = upstream.key;
    const max = this.deps.config.limits.maxMessageBytes;
    this.clientScanner = new MessageScanner(clientSessionPolicy(max), this.onClientMessage);
    this.serverScanner = new MessageScanner(serverSessionPolicy(max), this.onServerMessage);
    server.on("error", (e) => this.log.debug({ err: e.message }, "server socket error"));
    server.on("close", () => this.onServerGone());

    this.clientKey = this.deps.cancels.issue(upstream.key.processId, this.minor, this);
    for (const m of upstream.startupMessages) this.toClient.push(m);
    this.toClient.push(encodeBackendKeyData(this.clientKey), upstream.ready);
    this.machine.send(Events.UpstreamReady);
    this.log.info({ pid: upstream.key.processId }, "session ready");
    if (!this.relayPending(upstream.pending, this.onServerMessage, this.toClient)) return;
    batchWrite(this.client, this.toClient, server);
    if (!this.relayPending(clientPending, this.onClientMessage, this.toServer)) return;
    batchWrite(server, this.toServer, this.client);

    this.client.on("data", this.onClientData);
    server.on("data", this.onServerData);
    this.client.resume();
  }

  /** Runs messages that arrived during a handover through the same checks as the stream. */
  private relayPending(
    messages: readonly Buffer[],
    handler: (type: number, msg: Buffer) => Uint8Array | PgwardenError | undefined,
    out: Uint8Array[],
  ): boolean {
    for (const m of messages) {
      const v = handler(m[0]!, m);
      if (v === undefined) out.push(m);
      else if (v instanceof Uint8Array) {
        if (v.length > 0) out.push(v);
      } else {
        this.violation(v);
        return false;
      }
    }
    return true;
  }

  private readonly onClientData = (chunk: Buffer): void => {
    this.bytesFromClient += chunk.length;
    const err = this.clientScanner!.scan(chunk, this.toServer);
    if (err !== undefined) {
      this.toServer.length = 0;
      this.violation(err);
      return;
    }
    batchWrite(this.server!, this.toServer, this.client);
  };

  private readonly onServerData = (chunk: Buffer): void => {
    this.bytesFromServer += chunk.length;
    const err = this.serverScanner!.scan(chunk, this.toClient);
    if (err !== undefined) {
      batchWrite(this.client, this.toClient, this.server!);
      this.violation(
        err.message.startsWith("PostgreSQL")
          ? err
          : protocolError(`PostgreSQL sent an invalid stream: ${err.message}`),
      );
      return;
    }
    batchWrite(this.client, this.toClient, this.server!);
  };

  /** Each client control message: the machine decides whether it is legal here. */
  private readonly onClientMessage = (type: number, _msg: Buffer): PgwardenError | undefined => {
    const m = this.machine;
    const from = m.state;
    const copyIn = from === "busy.copy.in" || from === "busy.copy.both";
    if (m.send(clientEvents[type]!) === "violation") {
      return protocolError(
        `unexpected message type ${frontendName(type)} (0x${type.toString(16)}) in state ${from}`,
      );
    }
    // PostgreSQL ignores Flush and Sync during COPY IN: they owe nothing and leave nothing pending.
    if (copyIn) return undefined;
    if (isSyncPoint(type)) {
      this.outstanding++;
      this.unsynced = false;
    } else if (isExtended(type)) this.unsynced = true;
    return undefined;
  };

  /** Each server control message that changes what the client may do next. */
  private readonly onServerMessage = (type: number, msg: Buffer): PgwardenError | undefined => {
    const m = this.machine;
    let state: string;
    switch (type) {
      case Backend.ReadyForQuery: {
        const status = STATUS[msg.length === 6 ? msg[5]! : 0];
        if (status === undefined) return protocolError("invalid ReadyForQuery from PostgreSQL");
        if (this.outstanding > 0) this.outstanding--;
        state = m.send(ReadyForQuery[status][this.outstanding > 0 || this.unsynced ? 1 : 0]);
        break;
      }
      case Backend.CopyInResponse:
        state = m.send(Events.CopyInResponse);
        break;
      case Backend.CopyOutResponse:
        state = m.send(Events.CopyOutResponse);
        break;
      case Backend.CopyBothResponse:
        state = m.send(Events.CopyBothResponse);
        break;
      case Backend.CopyDone:
        state = m.send(Events.ServerCopyDone);
        break;
      case Backend.ErrorResponse:
        // PostgreSQL writes the severity first; FATAL and PANIC end the session.
        if (msg[5] === 0x53 && (msg[6] === 0x46 || msg[6] === 0x50)) this.serverSentFatal = true;
        return undefined;
      default:
        return undefined;
    }
    if (state === "violation")
      return protocolError(`PostgreSQL sent message 0x${type.toString(16)} out of turn`);
    return undefined;
  };

  // Endings --------------------------------------------------------------------------------------

  /** 08P01 to the client, then both legs closed. */
  private violation(e: PgwardenError): void {
    if (!this.machine.in("violation")) this.machine.send(Events.ProtocolViolation);
    this.log.warn({ code: e.code, reason: e.message }, "protocol violation");
    this.closeWith({ severity: "FATAL", code: e.sqlstate, message: e.message });
  }

  /** Sends a final error to the client, then closes both legs. */
  private closeWith(e: { severity: "FATAL"; code: string; message: string }): void {
    if (!this.clientGone && this.client.writable) this.client.end(encodeError(e));
    this.closeServer();
  }

  private closeServer(): void {
    const s = this.server;
    if (s === undefined || this.serverGone) return;
    if (s.writable) s.end(encodeTerminate());
    // A server that does not close within a second is not worth waiting for.
    setTimeout(() => s.destroy(), 1000).unref();
  }

  private onClientGone(): void {
    if (this.clientGone) return;
    this.clientGone = true;
    // A query left running for nobody holds locks and a backend: cancel it before leaving.
    if (this.machine.in("busy") && this.upstreamKey !== undefined && !this.serverGone) {
      void this.deps.sendCancel(this.upstreamTarget(), this.upstreamKey);
    }
    if (!this.machine.done) this.machine.send(Events.ClientClosed);
    this.closeServer();
    this.finish();
  }

  private onServerGone(): void {
    if (this.serverGone) return;
    this.serverGone = true;
    if (!this.clientGone) {
      if (!this.machine.in("terminating") && !this.machine.in("violation")) {
        this.machine.send(Events.ServerClosed);
        if (!this.serverSentFatal && this.client.writable) {
          this.client.write(
            encodeError({
              severity: "FATAL",
              code: SqlState.connectionFailure,
              message: "server closed the connection unexpectedly",
            }),
          );
        }
      }
      // Flush what the server sent last (its FATAL error, usually) before closing.
      this.client.end();
    }
    this.finish();
  }

  private finish(): void {
    if (!this.clientGone || (this.server !== undefined && !this.serverGone)) return;
    clearTimeout(this.startupTimer);
    if (!this.machine.done) this.machine.send(Events.Closed);
    if (this.clientKey !== undefined) this.deps.cancels.revoke(this.clientKey);
    this.log.info(
      {
        ms: Date.now() - this.openedAt,
        bytesFromClient: this.bytesFromClient,
        bytesFromServer: this.bytesFromServer,
      },
      "client disconnected",
    );
    this.resolveClosed();
  }

  /** CancelRequest for this session's running query (Cancellable). */
  cancel(): void {
    if (this.upstreamKey === undefined || this.serverGone) return;
    this.log.info("cancel request forwarded");
    void this.deps.sendCancel(this.upstreamTarget(), this.upstreamKey);
  }
}
