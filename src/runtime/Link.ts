import type { Socket } from "node:net";
import { batchWrite } from "../adapters/batchWrite.ts";
import { StatementTracker } from "../audit/StatementTracker.ts";
import { clearArray } from "../clearArray.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import { type ConnectionEvent, Events, ReadyForQuery } from "../machines/events.ts";
import type { ClientRunner } from "../machines/MachineRunner.ts";
import { ServerEvents } from "../machines/serverEvents.ts";
import { NO_EFFECTS, refusalQuery, refusedFeature, sessionEffectsOf } from "../pool/classify.ts";
import { Owed } from "../pool/OwedResponses.ts";
import { Action, ASYNC, type Entry, Replies, Reply, replacementOf, UNEXPECTED } from "../pool/Replies.ts";
import type { Pool, Waiter } from "../pool/ServerPool.ts";
import { replayQueries, type SessionState } from "../pool/SessionState.ts";
import { encodeCommandComplete, encodeError } from "../protocol/backend.ts";
import { decodeParse, encodeBind, encodeClose, encodeParse, encodeQuery } from "../protocol/frontend.ts";
import { DROP, type MessageHandler, MessageScanner, type Verdict } from "../protocol/MessageScanner.ts";
import { Backend, Frontend, frontendName } from "../protocol/messageTypes.ts";
import {
  auditedClientSessionPolicy,
  auditedServerSessionPolicy,
  clientSessionPolicy,
  pooledClientSessionPolicy,
  pooledServerSessionPolicy,
  serverSessionPolicy,
} from "../protocol/policies.ts";
import { rewriteStatementName, statementNameOf } from "../protocol/rewrite.ts";
import type { SqlParser } from "../sql/parser.ts";
import type { SessionEffect, StatementEffects } from "../sql/sessionEffects.ts";
import { clientEvents, isExtended, isSyncPoint } from "./clientEvents.ts";
import type { EventSink } from "./EventSink.ts";
import type { ServerConnection, ServerReceiver } from "./ServerConnection.ts";
import { relayData } from "./socketOwner.ts";

/** What the client half gives a link: its socket, its machine, and where to report an ending. */
export interface ClientSide {
  readonly id: string;
  readonly socket: Socket;
  readonly machine: ClientRunner;
  /** A violation on either leg: the client half sends 08P01 and both legs close. */
  violation(error: PgwardenError): void;
  /** Ends the session with `error` as a FATAL (a pool timeout, a refused transaction block). */
  endWith(error: PgwardenError): void;
  /** Pooled modes: the link now holds `server`, or has given it back. */
  attached(server: ServerConnection): void;
  released(server: ServerConnection, reason: "idle" | "clientClosed" | "error"): void;
}

/** How a pool's clients are served: one object per pool, shared by its clients. */
export interface PooledSession {
  readonly pool: Pool;
  readonly parser: SqlParser | undefined;
  readonly refusePins: boolean;
  readonly idleInTransactionTimeoutMs: number;
  readonly transactionTimeoutMs: number;
}

const statementModeRefusal = pgwardenError(
  "PGW_STATEMENT_MODE",
  SqlState.featureNotSupported,
  "transaction blocks are not allowed in statement pooling mode",
);
const idleInTransaction = pgwardenError(
  "PGW_IDLE_IN_TRANSACTION",
  SqlState.idleInTransactionTimeout,
  "terminating connection due to idle-in-transaction timeout",
);
const transactionTimeout = pgwardenError(
  "PGW_TRANSACTION_TIMEOUT",
  SqlState.transactionTimeout,
  "terminating connection due to transaction timeout",
);
const replayFailed = pgwardenError(
  "PGW_UPSTREAM_CLOSED",
  SqlState.connectionFailure,
  "could not restore the session's settings on a server connection",
);

const localError = (sqlstate: string, message: string): Buffer =>
  encodeError({ severity: "ERROR", code: sqlstate, message });

/** Portal and statement names of a Bind, without decoding its parameters. */
const bindNames = (msg: Buffer): { portal: string; statement: string } | undefined => {
  const a = msg.indexOf(0, 5);
  const b = a < 0 ? -1 : msg.indexOf(0, a + 1);
  if (b < 0) return undefined;
  return { portal: msg.toString("utf8", 5, a), statement: msg.toString("utf8", a + 1, b) };
};

/** Target ('S' or 'P') and name of a Describe or Close. */
const targetName = (msg: Buffer): { target: number; name: string } | undefined => {
  const end = msg.indexOf(0, 6);
  if (msg.length < 7 || end < 0) return undefined;
  return { target: msg[5]!, name: msg.toString("utf8", 6, end) };
};

/**
 * Server-side names pgwarden never prepares for a client (PreparedStatements names are PGW_ and
 * base-36 digits): a scratch name for a Parse that only checks, and one that never exists.
 */
const PROBE_NAME = "PGW__probe";
const NO_SUCH_NAME = "PGW__none";
/** Drops the probe's statement again; its CloseComplete is swallowed. */
const PROBE_CLOSE = encodeClose({ target: "S", name: PROBE_NAME });
/** Closing a name that does not exist succeeds, and PostgreSQL skips it after an error as it would the client's. */
const NO_OP_CLOSE = encodeClose({ target: "S", name: NO_SUCH_NAME });
/** Fails on any server, so that a request pgwarden refuses fails the transaction as PostgreSQL's own error would. */
const FAILING_BIND = encodeBind({
  portal: "",
  statement: NO_SUCH_NAME,
  paramFormats: [],
  params: [],
  resultFormats: [],
});

/**
 * The stand-in of a refused Parse: PostgreSQL fails it in analysis (a `*` with no table), which
 * comes after its check for an aborted transaction, so the client's Parse there gets 25P02 as
 * it would from PostgreSQL. Named, so that failing it leaves the unnamed statement alone.
 */
const FAILING_PARSE = encodeParse({ name: NO_SUCH_NAME, query: "SELECT *", paramTypes: [] });

const FLUSH = Buffer.from([Frontend.Flush, 0, 0, 0, 4]);
const DEALLOCATE_STANDIN = encodeQuery("DO $pgwarden$ BEGIN END $pgwarden$");
const DEALLOCATE_DONE = encodeCommandComplete("DEALLOCATE");

const concat = (parts: readonly Uint8Array[]): Uint8Array =>
  parts.length === 0 ? DROP : parts.length === 1 ? parts[0]! : Buffer.concat(parts);

/** Bytes a client may send while it waits for a server connection before its socket is paused. */
const STASH_LIMIT = 65_536;

const STATUS: Record<number, "I" | "T" | "E"> = { 73: "I", 84: "T", 69: "E" };
const READY_IDLE = Buffer.from([Backend.ReadyForQuery, 0, 0, 0, 5, 73]);

const internalFailure = (e: unknown): PgwardenError =>
  pgwardenError("PGW_INTERNAL", SqlState.internalError, "internal error in pgwarden", String(e));

/**
 * True when an ErrorResponse ends the session. PostgreSQL writes the non-localized severity `V`
 * (9.6+) besides the localized `S`: a French server's `S` says FATAL as "FATAL" but PANIC as
 * "PANIC" only by luck, so `V` decides and `S` counts only when no `V` is present.
 */
export const isFatalError = (msg: Buffer): boolean => {
  let severity: string | undefined;
  let pos = 5;
  while (pos < msg.length) {
    const code = msg[pos]!;
    if (code === 0) break;
    const end = msg.indexOf(0, pos + 1);
    if (end < 0) break;
    if (code === 0x56) return isFatalSeverity(msg, pos + 1, end); // V
    if (code === 0x53) severity = msg.toString("latin1", pos + 1, end); // S
    pos = end + 1;
  }
  return severity === "FATAL" || severity === "PANIC";
};

const isFatalSeverity = (msg: Buffer, start: number, end: number): boolean => {
  const s = msg.toString("latin1", start, end);
  return s === "FATAL" || s === "PANIC";
};

/**
 * Joins a client connection to a server connection: the two-way relay. Control messages drive
 * both machines and the server's owed-responses record; everything else passes as views of the
 * chunks it arrived in, one writev per read. In session mode a link holds one server connection
 * for the client's life. In transaction and statement mode (`pooled`) it holds one only from the
 * client's next request to ReadyForQuery `I` with nothing owed, then gives it back to the pool;
 * requests are matched to replies (Replies) so that prepared statements can be mapped and
 * replies pgwarden injected or answers itself come out in order.
 */
export class Link implements Waiter, ServerReceiver {
  readonly client: ClientSide;
  private current: ServerConnection | undefined;
  private serverSocket: Socket | undefined;
  private readonly clientScanner: MessageScanner;
  /** The attached server connection's stream; none while a pooled client waits between transactions. */
  private serverScanner: MessageScanner | undefined;
  private readonly serverPolicy;
  private readonly toServer: Uint8Array[] = [];
  private readonly toClient: Uint8Array[] = [];
  private readonly bufferLimit: number;
  private linked = true;
  /** Present only while audit records statements: audit off keeps the relay as lean as it was. */
  private readonly statements: StatementTracker | undefined;
  private readonly events: EventSink | undefined;

  // Pooled modes ------------------------------------------------------------------------------------
  private readonly pooled: PooledSession | undefined;
  /** Pooled modes: the client's own session settings, replayed on each server connection it gets. */
  private readonly state: SessionState | undefined;
  private readonly replies = new Replies();
  /** Chunks the client sent while the link held no server connection. */
  private stash: Buffer[] | undefined;
  private waiting = false;
  /** After a message pgwarden refused locally, PostgreSQL's rule: ignore everything up to Sync. */
  private skipToSync = false;
  /** Session effects per client statement and portal (named or not), for Execute to queue. */
  private statementEffects: Map<string, StatementEffects> | undefined;
  private portalEffects: Map<string, StatementEffects> | undefined;
  /** Effects of the Executes since the last Sync, then per sync point still owed. */
  private groupEffects: (readonly SessionEffect[])[] | undefined;
  private pendingGroups: StatementEffects[] | undefined;
  private executes = 0;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * Extended-protocol requests sent since the last Flush or Sync: PostgreSQL keeps their answers
   * until one comes, so until then the server connection waits on this client.
   */
  private unflushed = false;
  /** CopyDone/CopyFail the client sent before the CopyInResponse of the COPY they end. */
  private copyEndsAhead = 0;
  private transactionTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    client: ClientSide,
    server: ServerConnection | undefined,
    limits: {
      maxMessageBytes: number;
      maxBuffered: number;
      events?: EventSink;
      pooled?: PooledSession;
      state?: SessionState;
    },
  ) {
    this.client = client;
    this.current = server;
    this.serverSocket = server?.socket;
    this.bufferLimit = limits.maxBuffered;
    this.pooled = limits.pooled;
    this.state = limits.state;
    const events = limits.events;
    const audited = events?.statements === true;
    if (audited) {
      this.events = events;
      this.statements = new StatementTracker(client.id, events, undefined, server?.id);
    }
    // One handler per direction, for the mode in use: a method the scanners call on this link,
    // so an idle client carries no closure for them.
    const onClient: MessageHandler = audited
      ? Link.prototype.onClientMessageAudited
      : this.pooled !== undefined
        ? Link.prototype.onClientMessagePooled
        : Link.prototype.onClientMessage;
    this.onServer = audited
      ? Link.prototype.onServerMessageAudited
      : this.pooled !== undefined
        ? Link.prototype.onServerMessagePooled
        : Link.prototype.onServerMessage;
    const max = limits.maxMessageBytes;
    this.serverPolicy =
      this.pooled !== undefined
        ? pooledServerSessionPolicy(max)
        : audited
          ? auditedServerSessionPolicy(max)
          : serverSessionPolicy(max);
    this.clientScanner = new MessageScanner(
      this.pooled !== undefined
        ? pooledClientSessionPolicy(max)
        : audited
          ? auditedClientSessionPolicy(max)
          : clientSessionPolicy(max),
      onClient,
      this,
    );
    if (server !== undefined) this.serverScanner = this.newServerScanner();
  }

  private readonly onServer: MessageHandler;

  private newServerScanner(): MessageScanner {
    return new MessageScanner(this.serverPolicy, this.onServer, this);
  }

  private clientBase(type: number, msg: Buffer): Verdict {
    return this.pooled !== undefined
      ? this.onClientMessagePooled(type, msg)
      : this.onClientMessage(type, msg);
  }

  private serverBase(type: number, msg: Buffer): Verdict {
    return this.pooled !== undefined
      ? this.onServerMessagePooled(type, msg)
      : this.onServerMessage(type, msg);
  }

  /** Since when the client waits for a server connection (pooled modes), for SHOW CLIENTS. */
  get waitingSince(): number | undefined {
    return this.waiting ? this.waitStart : undefined;
  }

  private waitStart = 0;

  /** The client has part of a message relayed from the server: nothing of pgwarden's may follow. */
  get clientMidMessage(): boolean {
    return this.serverScanner?.midStreamed === true;
  }

  /**
   * The client left session state on the server connection it holds (an advisory lock, LISTEN, a
   * temporary table, a held cursor, SQL PREPARE): no other client may get that connection.
   */
  get pinned(): boolean {
    return this.state?.pinned === true;
  }

  /** The server connection the link holds now (pooled modes: none between transactions). */
  get server(): ServerConnection | undefined {
    return this.current;
  }

  /** Starts relaying: first what each side sent ahead, then the live streams. */
  start(first: {
    toClient: readonly Uint8Array[];
    serverPending: readonly Buffer[];
    clientPending: readonly Buffer[];
  }): void {
    for (const m of first.toClient) this.toClient.push(m);
    if (!this.replay(first.serverPending, (t, m) => this.serverBase(t, m), this.toClient)) return;
    this.flushToClient();
    // The socket's owner, the client connection, hands what it reads to its link.
    relayData(this.client.socket, true);
    if (this.pooled && this.current?.owed.settled) {
      // The login's server connection goes back at once: the client has asked for nothing yet.
      this.release("idle");
    }
    // What the client sent with its last login message (bytes, maybe a message cut short) goes
    // through the scanner like anything it sends later.
    this.current?.relayTo(this);
    for (const m of first.clientPending) {
      this.onClientData(m);
      if (!this.linked) return;
    }
    this.client.socket.resume();
  }

  /** Stops relaying in both directions (the connection is ending, or the pool takes the server back). */
  unlink(): void {
    if (!this.linked) return;
    this.linked = false;
    // The client is gone: its statement names go with it (the servers keep theirs, for others).
    this.pooled?.pool.statements?.onClientClosed(this.client.id);
    // Requests left unanswered are recorded now: nothing more of their answers reaches this link.
    this.statements?.abandon();
    relayData(this.client.socket, false);
    this.current?.relayTo(undefined);
    this.clearTimers();
    if (this.waiting) {
      this.pooled?.pool.abandon(this);
      this.waiting = false;
    }
  }

  /** Messages that arrived during a handover go through the same checks as the stream. */
  private replay(
    messages: readonly Buffer[],
    handler: (type: number, msg: Buffer) => Verdict,
    out: Uint8Array[],
  ): boolean {
    for (const m of messages) {
      const v = handler(m[0]!, m);
      if (v === undefined) out.push(m);
      else if (v instanceof Uint8Array) {
        if (v.length > 0) out.push(v);
      } else {
        this.client.violation(v);
        return false;
      }
    }
    return true;
  }

  private flushToServer(): void {
    if (this.toServer.length === 0) return;
    if (!batchWrite(this.serverSocket!, this.toServer, this.client.socket, this.bufferLimit))
      this.overLimit();
  }

  private flushToClient(): void {
    if (this.toClient.length === 0) return;
    const peer = this.serverSocket ?? this.client.socket;
    if (!batchWrite(this.client.socket, this.toClient, peer, this.bufferLimit)) this.overLimit();
  }

  private overLimit(): void {
    this.client.violation(
      pgwardenError(
        "PGW_BUFFER_LIMIT",
        SqlState.protocolViolation,
        `more than ${this.bufferLimit} bytes are waiting to be written for this connection`,
      ),
    );
  }

  onClientData(chunk: Buffer): void {
    if (this.current === undefined && !this.terminateOnly(chunk)) {
      // Pooled, between transactions: the next request waits for a server connection.
      if (this.stash === undefined) this.stash = [chunk];
      else this.stash.push(chunk);
      this.stashed += chunk.length;
      // A client that keeps writing while it waits is paused; one request per wait never is
      // (pausing and resuming a socket costs two system calls per transaction).
      if (this.stashed > STASH_LIMIT && !this.pausedForServer) {
        this.pausedForServer = true;
        this.client.socket.pause();
      }
      this.checkout();
      return;
    }
    let err: PgwardenError | undefined;
    try {
      err = this.clientScanner.scan(chunk, this.toServer);
    } catch (e) {
      // A bug in pgwarden ends this connection, never the process.
      err = internalFailure(e);
    }
    if (err !== undefined) {
      clearArray(this.toServer);
      this.client.violation(err);
      return;
    }
    // Requests before a Terminate in the same chunk still go: PostgreSQL would run them. (A
    // server connection with a request on its way is never reusable, so never another's.)
    if (this.current !== undefined) this.flushToServer();
    if (this.pooled === undefined || !this.linked) return;
    // Checked out for bytes that asked nothing of the server (a stray CopyData): it goes back.
    this.releaseIfIdle();
    this.armIfUnsyncedIdle();
  }

  /**
   * Pooled modes: the server connection goes back once it is idle (ReadyForQuery `I`, nothing
   * owed) with no reply, held message or pinned state of this client's left on it.
   */
  private releaseIfIdle(): void {
    if (
      // Unlinked while this chunk was read (its Terminate): the client connection gave the
      // server connection back already, and releasing it again would hand it out twice.
      this.linked &&
      this.current?.reusable === true &&
      this.replies.empty &&
      this.held === undefined &&
      !this.state!.pinned &&
      this.serverScanner?.atBoundary !== false
    )
      this.release("idle");
  }

  /** A lone Terminate needs no server connection. */
  private terminateOnly(chunk: Buffer): boolean {
    return (
      chunk.length === 5 &&
      chunk[0] === Frontend.Terminate &&
      chunk.readInt32BE(1) === 4 &&
      this.clientScanner.atBoundary
    );
  }

  /**
   * ServerReceiver: views of the last chunk are still queued for the client (the kernel did not
   * take them all): the server connection's next read must not land in the same buffer.
   */
  holdsRead(): boolean {
    return this.client.socket.writableLength > 0;
  }

  /** ServerReceiver: what the linked server connection sends. */
  onServerData(chunk: Buffer): void {
    let err: PgwardenError | undefined;
    try {
      this.serverScanner ??= this.newServerScanner();
      err = this.serverScanner.scan(chunk, this.toClient);
    } catch (e) {
      err = internalFailure(e);
    }
    // What came before a bad message still reaches the client: an error, often.
    this.flushToClient();
    if (err !== undefined) {
      this.current?.machine.send(ServerEvents.ProtocolViolation);
      this.client.violation(
        err.code !== "PGW_PROTOCOL" || err.message.startsWith("PostgreSQL")
          ? err
          : protocolError(`PostgreSQL sent an invalid stream: ${err.message}`),
      );
      return;
    }
    if (this.pooled === undefined) return;
    // Messages held for an earlier Parse's answer go to this server connection first.
    if (this.held !== undefined && this.replies.empty) this.releaseHeld();
    this.releaseIfIdle();
    this.armIfUnsyncedIdle();
  }

  /**
   * Pooled modes: a client that sent part of an extended batch and then nothing — no Sync — holds
   * its server connection inside the implicit transaction PostgreSQL opened for the batch, with no
   * ReadyForQuery to arm a timer at. Once every answer it can get is in (or PostgreSQL holds them
   * for a Flush it never sent), it is idle in a transaction: the same timeouts apply.
   */
  private armIfUnsyncedIdle(): void {
    const server = this.current;
    if (server === undefined || !server.owed.unsynced || this.held !== undefined) return;
    if (this.replies.empty || this.unflushed) this.armTransactionTimers();
  }

  /** Audit on: a new statement is refused while the audit trail cannot take records; others are recorded. */
  private onClientMessageAudited(type: number, msg: Buffer): Verdict {
    if (type === Frontend.Query || type === Frontend.Parse || type === Frontend.FunctionCall) {
      const blocked = this.events!.blocked?.();
      if (blocked !== undefined) return this.refuseStatement(type, msg, blocked);
    }
    this.heldLast = false;
    const v = this.clientBase(type, msg);
    // Pooled modes rename statements or answer them locally: recorded all the same. A message
    // held for an earlier Parse's answer is recorded when it is replayed, not twice.
    if (v === undefined || (this.pooled !== undefined && !isPgwardenError(v) && !this.heldLast))
      this.statements!.client(type, msg);
    return v;
  }

  private onServerMessageAudited(type: number, msg: Buffer): Verdict {
    // A ReadyForQuery moves the machines first, so the statements it closes carry those transitions.
    if (type === Backend.ReadyForQuery) {
      const v = this.serverBase(type, msg);
      this.statements!.server(type, msg);
      return v;
    }
    // The stand-in error of a refused request is recorded as the error the client gets.
    const shown =
      type === Backend.ErrorResponse && this.pooled !== undefined ? this.replies.replacement(msg) : undefined;
    this.statements!.server(type, shown ?? msg);
    return type === Backend.CommandComplete && this.pooled === undefined
      ? undefined
      : this.serverBase(type, msg);
  }

  /**
   * AU-5 block: the statement does not reach PostgreSQL. Outside a transaction, with nothing
   * owed, a Query or FunctionCall gets ERROR + ReadyForQuery as PostgreSQL would answer a failed
   * statement; anywhere else the session ends with the same SQLSTATE as FATAL, so PostgreSQL
   * rolls back whatever the client believed it could still commit.
   */
  private refuseStatement(type: number, msg: Buffer, why: string): Verdict {
    const error = pgwardenError(
      "PGW_AUDIT_UNAVAILABLE",
      SqlState.auditUnavailable,
      "statement refused: the audit trail cannot record it",
      why,
    );
    this.statements!.refused(type, msg, error.sqlstate);
    const m = this.client.machine;
    const owed = this.current?.owed;
    if (
      type === Frontend.Parse ||
      m.state !== "ready.idle" ||
      owed === undefined ||
      owed.size > 0 ||
      owed.unsynced
    )
      return error;
    if (!m.sendUnlessViolation(clientEvents[type]!)) return error;
    m.sendUnlessViolation(ReadyForQuery.I[0]);
    this.toClient.push(
      encodeError({ severity: "ERROR", code: error.sqlstate, message: error.message, detail: why }),
      READY_IDLE,
    );
    this.flushToClient();
    return DROP;
  }

  /** Each client control message: the machine decides whether it is legal here. */
  private onClientMessage(type: number, _msg: Buffer): Verdict {
    const m = this.client.machine;
    const from = m.state;
    const copyIn = from === "busy.copy.in" || from === "busy.copy.both";
    // Judged before it is applied, so the violation's ending carries the reason.
    if (!m.sendUnlessViolation(clientEvents[type]!)) {
      return protocolError(
        `unexpected message type ${frontendName(type)} (0x${type.toString(16)}) in state ${from}`,
      );
    }
    // The client's Terminate ends its session, not the server connection: the pool decides that.
    if (type === Frontend.Terminate) return DROP;
    // A COPY's end sent ahead of its CopyInResponse (the data pipelined with the COPY): it is
    // counted, so that the COPY it ends is over as soon as it starts.
    if (
      (type === Frontend.CopyDone || type === Frontend.CopyFail) &&
      !from.startsWith("busy.copy.") &&
      from.startsWith("busy")
    )
      this.copyEndsAhead++;
    // PostgreSQL ignores Flush and Sync during COPY IN: they owe nothing and leave nothing pending.
    if (copyIn) return undefined;
    const owed = this.current!.owed;
    if (isSyncPoint(type)) {
      owed.push(Owed.forward);
      owed.unsynced = false;
      this.current!.machine.send(ServerEvents.Request);
    } else if (isExtended(type)) owed.unsynced = true;
    return undefined;
  }

  /** Each server control message that changes what the client may do next. */
  private onServerMessage(type: number, msg: Buffer): PgwardenError | undefined {
    let event: ConnectionEvent;
    switch (type) {
      case Backend.ReadyForQuery: {
        const status = STATUS[msg.length === 6 ? msg[5]! : 0];
        if (status === undefined) return protocolError("PostgreSQL sent an invalid ReadyForQuery");
        const owed = this.current!.owed;
        owed.shift();
        event = ReadyForQuery[status][owed.size > 0 || owed.unsynced ? 1 : 0];
        this.current!.machine.send(event);
        if (this.pooled !== undefined) {
          const refused = this.afterReadyForQuery(status);
          if (refused !== undefined) return refused;
        }
        break;
      }
      case Backend.CopyInResponse:
        event = Events.CopyInResponse;
        break;
      case Backend.CopyOutResponse:
        event = Events.CopyOutResponse;
        break;
      case Backend.CopyBothResponse:
        event = Events.CopyBothResponse;
        break;
      case Backend.CopyDone:
        event = Events.ServerCopyDone;
        break;
      case Backend.ErrorResponse:
        // Relayed first; the machine then ends the session once this read is written.
        if (isFatalError(msg)) this.client.machine.send(Events.ServerFatal);
        return undefined;
      default:
        return undefined;
    }
    const m = this.client.machine;
    if (!m.sendUnlessViolation(event))
      return protocolError(`PostgreSQL sent message 0x${type.toString(16)} out of turn in state ${m.state}`);
    if (this.copyEndsAhead > 0) {
      if (type === Backend.CopyInResponse) {
        // The client sent this COPY's end before PostgreSQL asked for the data: it is over.
        this.copyEndsAhead--;
        m.send(Events.CopyDone);
      } else if (type === Backend.ReadyForQuery && m.state.startsWith("ready")) this.copyEndsAhead = 0;
    }
    return undefined;
  }

  // Pooled modes: requests --------------------------------------------------------------------------

  /**
   * The session rules first (the machine), then what pooling needs: statement names mapped to
   * the pool's, session effects noted, each request's reply expected in order.
   */
  private onClientMessagePooled(type: number, msg: Buffer): Verdict {
    if (this.held !== undefined || this.waitsForEarlierParse(type, msg)) return this.hold(type, msg);
    const copyIn = this.client.machine.state.startsWith("busy.copy.");
    const v = this.onClientMessage(type, msg);
    if (v !== undefined || copyIn) return v;
    // Outside COPY PostgreSQL ignores these and answers nothing: with nothing asked of the server
    // they hold no server connection. Behind a request (a COPY whose CopyInResponse has not come
    // yet, say) they go on: PostgreSQL reads them in order, inside the COPY or not.
    if (
      (type === Frontend.CopyData || type === Frontend.CopyDone || type === Frontend.CopyFail) &&
      this.replies.empty
    )
      return DROP;
    this.clearIdleTimer();
    this.unflushed = isExtended(type) && type !== Frontend.Flush;
    if (this.skipToSync && type !== Frontend.Sync) return isExtended(type) ? DROP : this.requested(type, msg);
    return this.requested(type, msg);
  }

  /**
   * A statement name whose Parse, sent before an earlier Sync, is still unanswered: whether the
   * name exists depends on that answer (a failed Parse leaves it free, as PostgreSQL does), so
   * this message and everything after it wait until the answers are in.
   */
  private waitsForEarlierParse(type: number, msg: Buffer): boolean {
    const pending = this.pendingParses;
    if (pending === undefined || pending.size === 0) return false;
    if (
      type !== Frontend.Parse &&
      type !== Frontend.Bind &&
      type !== Frontend.Describe &&
      type !== Frontend.Close
    )
      return false;
    const name = statementNameOf(msg);
    if (name === undefined) return false;
    const group = pending.get(name);
    return group !== undefined && group < this.syncs;
  }

  /** Keeps a message for later, unjudged: it is judged when replayed, in order. */
  private hold(type: number, msg: Buffer): Verdict {
    let flush = false;
    if (this.held === undefined) {
      this.held = [];
      this.pausedForHold = true;
      this.client.socket.pause();
      // What was sent since the last Sync is answered only at a Sync or Flush: without one, the
      // answers the held messages wait for would never come.
      flush = this.current?.owed.unsynced === true;
    }
    if (msg.length > 0) this.held.push(msg);
    else if (
      type === Frontend.Sync ||
      type === Frontend.Flush ||
      type === Frontend.Terminate ||
      type === Frontend.CopyDone
    )
      this.held.push(Buffer.from([type, 0, 0, 0, 4]));
    else return protocolError(`message ${frontendName(type)} cannot wait for an earlier Parse`);
    this.heldLast = true;
    return flush ? FLUSH : DROP;
  }

  /** Every answer before the held messages is in: they go through the relay now, in order. */
  private releaseHeld(): void {
    const held = this.held!;
    this.held = undefined;
    for (const m of held) {
      if (!this.linked) return;
      this.onClientData(m);
    }
    if (this.held === undefined && this.pausedForHold && this.linked) {
      this.pausedForHold = false;
      this.client.socket.resume();
    }
  }

  /** The client's last unnamed Parse (until a simple query drops it), for another server connection. */
  private unnamed: Buffer | undefined;
  /** Whether the server connection held now has this client's unnamed statement. */
  private unnamedHere = false;
  private held: Buffer[] | undefined;
  /** The message just judged was held (audit records it when it is replayed). */
  private heldLast = false;
  private pausedForHold = false;
  private pendingParses: Map<string, number> | undefined;
  /** Sync points this client has sent: the group a pending Parse belongs to. */
  private syncs = 0;

  private requested(type: number, msg: Buffer): Verdict {
    const pooled = this.pooled!;
    const statements = pooled.pool.statements;
    const server = this.current!;
    switch (type) {
      case Frontend.Query: {
        // A simple query drops the unnamed statement, in PostgreSQL too.
        this.unnamed = undefined;
        this.unnamedHere = false;
        const sql = msg.toString("utf8", 5, msg.length - 1);
        const effects = sessionEffectsOf(pooled.parser, sql);
        const deallocated = this.deallocatesStatement(effects);
        if (deallocated !== undefined) return deallocated;
        this.replies.push({ reply: Reply.query, action: Action.forward });
        const refused = pooled.refusePins ? refusedFeature(effects) : undefined;
        this.syncPoint(refused === undefined ? effects : NO_EFFECTS);
        // The server fails it, so a transaction block fails exactly as for any failed statement.
        return refused === undefined ? undefined : encodeQuery(refusalQuery(refused));
      }
      case Frontend.FunctionCall:
        this.replies.push({ reply: Reply.query, action: Action.forward });
        this.syncPoint(NO_EFFECTS);
        return undefined;
      case Frontend.Sync:
        this.skipToSync = false;
        this.replies.push({ reply: Reply.sync, action: Action.forward });
        this.syncPoint(this.groupEffects ?? NO_EFFECTS);
        this.groupEffects = undefined;
        this.executes = 0;
        return undefined;
      case Frontend.Parse: {
        const p = decodeParse(msg);
        if (isPgwardenError(p)) return p;
        const effects = sessionEffectsOf(pooled.parser, p.query);
        const refused = pooled.refusePins ? refusedFeature(effects) : undefined;
        if (refused !== undefined) return this.refuseLocally(SqlState.featureNotSupported, refused, "parse");
        if (effects.length > 0) {
          this.statementEffects ??= new Map();
          this.statementEffects.set(p.name, effects);
        } else this.statementEffects?.delete(p.name);
        if (p.name === "") {
          this.unnamed = msg;
          this.unnamedHere = true;
        }
        if (statements === undefined || p.name === "") {
          this.replies.push({ reply: Reply.parse, action: Action.forward, name: p.name });
          return undefined;
        }
        const scope = this.statementScope();
        const answer = statements.onParse(this.client.id, p.name, p.query, p.paramTypes, server.id, scope);
        if ("sqlstate" in answer) return this.refuseLocally(answer.sqlstate, answer.message, "parse");
        const out: Uint8Array[] = [];
        this.inject(answer.evict, out);
        // A statement the server holds already is still parsed, under a scratch name: only
        // PostgreSQL knows whether this Parse fails (an aborted transaction, an earlier error).
        const probe = !answer.needsParse;
        const renamed = rewriteStatementName(msg, probe ? PROBE_NAME : answer.serverName);
        if (isPgwardenError(renamed)) return renamed;
        this.replies.push({
          reply: Reply.parse,
          action: Action.forward,
          name: p.name,
          pending: p.name,
          ...(probe ? { probe: true as const } : {}),
        });
        this.awaitName(p.name);
        out.push(renamed);
        if (probe) this.inject([PROBE_CLOSE], out);
        return concat(out);
      }
      case Frontend.Bind: {
        const names = bindNames(msg);
        if (names === undefined) return protocolError("Bind: names are not terminated");
        const effects = this.statementEffects?.get(names.statement);
        if (effects !== undefined) {
          this.portalEffects ??= new Map();
          this.portalEffects.set(names.portal, effects);
        } else this.portalEffects?.delete(names.portal);
        return this.useStatement(Reply.bind, names.statement, msg);
      }
      case Frontend.Describe: {
        const t = targetName(msg);
        if (t === undefined) return protocolError("Describe: malformed");
        if (t.target === 0x50) {
          this.replies.push({ reply: Reply.describePortal, action: Action.forward });
          return undefined;
        }
        return this.useStatement(Reply.describeStatement, t.name, msg);
      }
      case Frontend.Close: {
        const t = targetName(msg);
        if (t === undefined) return protocolError("Close: malformed");
        if (t.target === 0x53) this.statementEffects?.delete(t.name);
        else this.portalEffects?.delete(t.name);
        const closed = t.target === 0x53 ? statements?.onClose(this.client.id, t.name) : undefined;
        if (closed !== undefined && closed !== false) {
          // The server-side statement stays for other clients; this client's name is gone, unless
          // PostgreSQL skips the Close (an error before it), which the no-op Close in its place tells.
          this.replies.push({
            reply: Reply.close,
            action: Action.forward,
            closes: { name: t.name, token: closed },
            pending: t.name,
          });
          this.awaitName(t.name);
          return NO_OP_CLOSE;
        }
        this.replies.push({ reply: Reply.close, action: Action.forward });
        return undefined;
      }
      case Frontend.Execute: {
        const end = msg.indexOf(0, 5);
        const portal = end < 0 ? "" : msg.toString("utf8", 5, end);
        // One entry per Execute, in order: each is matched to its CommandComplete.
        const effects = this.portalEffects?.get(portal)?.[0];
        if (effects !== undefined) {
          this.groupEffects ??= [];
          const group = this.groupEffects;
          while (group.length < this.executes) group.push([]);
          group.push(effects);
        } else this.groupEffects?.push([]);
        this.executes++;
        this.replies.push({ reply: Reply.execute, action: Action.forward });
        return undefined;
      }
      default:
        return undefined;
    }
  }

  /**
   * SQL DEALLOCATE of a statement the client prepared with the protocol: the server knows it by
   * pgwarden's shared name, so only the client's name goes, once an empty DO block (which fails
   * exactly where DEALLOCATE would: in an aborted transaction) has succeeded in its place.
   */
  private deallocatesStatement(effects: StatementEffects): Verdict | undefined {
    const statements = this.pooled!.pool.statements;
    // Most queries change no session state: nothing to look through (and no array made per query).
    if (statements === undefined || effects.length === 0) return undefined;
    let name: string | undefined;
    for (const e of effects.flat())
      if (e.kind === "deallocate" && !e.all && statements.holds(this.client.id, e.name)) name = e.name;
    if (name === undefined) return undefined;
    const alone = effects.length === 1 && effects[0]!.length === 1;
    this.replies.push({
      reply: Reply.query,
      action: Action.forward,
      ...(alone ? { deallocates: name } : {}),
    });
    this.syncPoint(NO_EFFECTS);
    if (alone) return DEALLOCATE_STANDIN;
    return encodeQuery(
      refusalQuery(
        "DEALLOCATE of a protocol-level prepared statement must be its query's only statement in transaction pooling mode",
      ),
    );
  }

  /** Bind or Describe of a statement: on this server it may need a re-Parse first. */
  private useStatement(reply: Reply, name: string, msg: Buffer): Verdict {
    const statements = this.pooled!.pool.statements;
    if (name === "" && !this.unnamedHere) {
      // This server connection's unnamed statement is not this client's (another client's, or
      // none): the client's own is parsed again, as for a named one, or it has none.
      if (this.unnamed === undefined)
        return this.refuseLocally(SqlState.invalidStatementName, "unnamed prepared statement does not exist");
      const out: Uint8Array[] = [];
      this.inject([this.unnamed], out);
      this.unnamedHere = true;
      this.replies.push({ reply, action: Action.forward });
      out.push(msg);
      return concat(out);
    }
    if (statements === undefined || name === "") {
      this.replies.push({ reply, action: Action.forward });
      return undefined;
    }
    const answer =
      reply === Reply.bind
        ? statements.onBind(this.client.id, name, this.current!.id)
        : statements.onDescribe(this.client.id, name, this.current!.id);
    if ("sqlstate" in answer) return this.refuseLocally(answer.sqlstate, answer.message);
    const out: Uint8Array[] = [];
    this.inject(answer.inject, out);
    const renamed = rewriteStatementName(msg, answer.serverName);
    if (isPgwardenError(renamed)) return renamed;
    this.replies.push({ reply, action: Action.forward });
    out.push(renamed);
    return concat(out);
  }

  /** Close and Parse messages pgwarden sends on its own: their replies are swallowed. */
  private inject(messages: readonly Buffer[], out: Uint8Array[]): void {
    for (const m of messages) {
      const parse = m[0] === Frontend.Parse;
      // The server-side name, in both: undone if PostgreSQL skips the message.
      const name = m.toString("utf8", parse ? 5 : 6, m.indexOf(0, parse ? 5 : 6));
      this.replies.push({ reply: parse ? Reply.parse : Reply.close, action: Action.skip, name });
      out.push(m);
    }
  }

  /**
   * What besides its text and types makes a statement the same on the server: the search_path it
   * is parsed under. Known only for a Parse that is the client's first request since a
   * ReadyForQuery `I`; inside a transaction or behind other requests a SET (or SET LOCAL) may not
   * be counted yet, so such a statement is shared with nobody.
   */
  private statementScope(): string {
    const state = this.state!;
    if (this.replies.empty && !state.inTransaction) return state.current.get("search_path")?.text ?? "";
    return `\u0000${this.client.id}:${++this.unsharedScopes}`;
  }

  private unsharedScopes = 0;

  /** Requests of later Syncs that name `name` wait until this one's reply is in. */
  private awaitName(name: string): void {
    this.pendingParses ??= new Map();
    this.pendingParses.set(name, this.syncs);
  }

  /**
   * pgwarden's ERROR in the place of this message's reply. The server gets a message that fails
   * instead, so it aborts the transaction (or the batch's implicit one) and skips to Sync just as
   * after its own error; pgwarden drops the rest up to Sync.
   */
  private refuseLocally(sqlstate: string, message: string, request: "parse" | "bind" = "bind"): Verdict {
    const reply = request === "parse" ? Reply.parse : Reply.bind;
    this.replies.push({ reply, action: Action.replace, local: localError(sqlstate, message) });
    this.skipToSync = true;
    return request === "parse" ? FAILING_PARSE : FAILING_BIND;
  }

  /** One more ReadyForQuery owed; its effects start counting once the replies before it are in. */
  private syncPoint(effects: StatementEffects): void {
    this.syncs++;
    if (this.current!.owed.size === 1) this.state!.queue(effects);
    else {
      this.pendingGroups ??= [];
      this.pendingGroups.push(effects);
    }
  }

  // Pooled modes: replies ---------------------------------------------------------------------------

  private onServerMessagePooled(type: number, msg: Buffer): Verdict {
    const skipped: Entry[] | undefined = type === Backend.ErrorResponse ? [] : undefined;
    const match = this.replies.match(type, skipped);
    if (match === UNEXPECTED)
      return protocolError(`PostgreSQL sent message 0x${type.toString(16)} that answers no request`);
    const server = this.current!;
    let ignoredQueries = 0;
    if (skipped !== undefined)
      for (const e of skipped) {
        this.undone(e, server);
        if (e.reply === Reply.query) ignoredQueries++;
      }
    let out: Verdict;
    if (match !== ASYNC) out = this.replied(type, msg, match, server);
    else if (type === Backend.ParameterStatus) {
      server.noteParameter(msg);
      const p = msg.indexOf(0, 5);
      if (p > 0)
        this.state!.onParameterStatus(
          msg.toString("utf8", 5, p),
          msg.toString("utf8", p + 1, msg.length - 1),
        );
    }
    // A Query sent before the Sync PostgreSQL now skips to is ignored too: it owes no ReadyForQuery.
    for (; ignoredQueries > 0; ignoredQueries--) {
      server.owed.shift();
      const next = this.pendingGroups?.shift();
      if (next !== undefined) this.state!.queue(next);
    }
    return this.onServerMessage(type, msg) ?? out;
  }

  /**
   * A request that failed, or that PostgreSQL skipped after an earlier error: what it registered
   * is undone (a Parse's name never came to be, a Close's name is back, an evicted statement is
   * still on the server).
   */
  private undone(entry: Entry, server: ServerConnection): void {
    if (entry.pending !== undefined) this.pendingParses?.delete(entry.pending);
    // A failed unnamed Parse leaves no unnamed statement: PostgreSQL drops the old one first.
    if (entry.name === "" && entry.reply === Reply.parse && entry.action === Action.forward) {
      this.unnamed = undefined;
      this.unnamedHere = false;
      return;
    }
    const statements = this.pooled!.pool.statements;
    if (statements === undefined) return;
    if (entry.closes !== undefined) {
      statements.reopen(this.client.id, entry.closes.name, entry.closes.token as object);
      return;
    }
    if (entry.name === undefined) return;
    if (entry.reply === Reply.close) {
      if (entry.action === Action.skip) statements.onEvictSkipped(server.id, entry.name);
    } else if (entry.reply === Reply.parse) {
      if (entry.action === Action.skip) statements.onReparseFailed(server.id, entry.name);
      else if (entry.action === Action.forward) {
        if (entry.probe === true) statements.onProbeFailed(this.client.id, entry.name);
        else statements.onParseFailed(this.client.id, entry.name, server.id);
      }
    }
  }

  /** A reply to `entry`: bookkeeping, and whether the client gets it. */
  private replied(type: number, msg: Buffer, entry: Entry, server: ServerConnection): Verdict {
    const pooled = this.pooled!;
    const statements = pooled.pool.statements;
    if (entry.pending !== undefined) this.pendingParses?.delete(entry.pending);
    if (type === Backend.ErrorResponse) {
      this.state!.onError();
      this.undone(entry, server);
      // A failed re-Parse is the client's error too: its Bind would fail next. A refusal's
      // stand-in error is not: pgwarden's own goes in its place.
      return replacementOf(entry, msg);
    }
    if (
      entry.reply === Reply.execute &&
      (type === Backend.PortalSuspended || type === Backend.EmptyQueryResponse)
    ) {
      // The Execute ended short of CommandComplete, but what it ran (a set_config) took effect.
      this.state!.onCommandComplete();
    } else if (type === Backend.CommandComplete && entry.deallocates !== undefined) {
      statements?.onClose(this.client.id, entry.deallocates);
      return DEALLOCATE_DONE;
    } else if (type === Backend.CommandComplete) {
      this.state!.onCommandComplete();
      const tag = msg.toString("latin1", 5, msg.length - 1);
      if (tag === "DISCARD ALL" || tag === "DEALLOCATE ALL") {
        // The server dropped every prepared statement; only this client's names go with them.
        statements?.onServerCleared(server.id);
        statements?.deallocateAll(this.client.id);
      }
    }
    return entry.action === Action.forward ? undefined : DROP;
  }

  /**
   * ReadyForQuery in a pooled mode: session state settles, statement mode refuses transaction
   * blocks, and at `I` with nothing owed the server connection goes back to the pool.
   */
  private afterReadyForQuery(status: "I" | "T" | "E"): PgwardenError | undefined {
    const pooled = this.pooled!;
    this.state!.onReadyForQuery(status);
    const next = this.pendingGroups?.shift();
    if (next !== undefined) this.state!.queue(next);
    const stats = pooled.pool.stats;
    stats.queries++;
    if (status !== "I") {
      if (pooled.pool.settings.mode === "statement") return statementModeRefusal;
      this.armTransactionTimers();
      return undefined;
    }
    stats.transactions++;
    this.clearTimers();
    return undefined;
  }

  private armTransactionTimers(): void {
    const { idleInTransactionTimeoutMs: idle, transactionTimeoutMs: total } = this.pooled!;
    if (idle > 0) {
      this.clearIdleTimer();
      this.idleTimer = setTimeout(() => this.client.endWith(idleInTransaction), idle);
    }
    if (total > 0 && this.transactionTimer === undefined)
      this.transactionTimer = setTimeout(() => this.client.endWith(transactionTimeout), total);
  }

  private clearIdleTimer(): void {
    if (this.idleTimer === undefined) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private clearTimers(): void {
    this.clearIdleTimer();
    if (this.transactionTimer !== undefined) clearTimeout(this.transactionTimer);
    this.transactionTimer = undefined;
  }

  // Pooled modes: holding and giving back server connections -----------------------------------------

  /** Asks the pool for a server connection; the client's bytes wait, its socket paused. */
  private checkout(): void {
    if (this.waiting || !this.linked) return;
    this.waiting = true;
    this.waitStart = Date.now();
    this.pooled!.pool.acquire(this);
  }

  /** Waiter: the pool's answer to checkout (the link itself waits: nothing allocated per wait). */
  granted(server: ServerConnection): void {
    if (!this.waiting) {
      this.pooled!.pool.release(server);
      return;
    }
    this.waiting = false;
    const state = this.state!;
    const queries = server.settings.sameAs(state)
      ? []
      : replayQueries(state.current, server.settings.current);
    if (queries.length === 0) this.resume(server);
    else void this.prepare(server, queries).catch(() => this.client.endWith(replayFailed));
  }

  failed(error: PgwardenError): void {
    if (!this.waiting) return;
    this.waiting = false;
    this.client.endWith(error);
  }

  /** The client's settings onto the server connection first (one query, replies swallowed). */
  private async prepare(server: ServerConnection, queries: readonly string[]): Promise<void> {
    for (const sql of queries) {
      if (!(await server.run(sql, this.pooled!.pool.settings.serverConnectTimeoutMs))) {
        server.close();
        this.pooled!.pool.release(server);
        this.client.endWith(replayFailed);
        return;
      }
    }
    this.resume(server);
  }

  /** The server connection is ready for this client: the requests that waited go to it. */
  private resume(server: ServerConnection): void {
    if (!this.linked) {
      this.pooled!.pool.release(server);
      return;
    }
    server.settings.adoptFrom(this.state!);
    this.attach(server);
    const stash = this.stash ?? [];
    this.stash = undefined;
    this.stashed = 0;
    for (const chunk of stash) {
      if (!this.linked) return;
      this.onClientData(chunk);
    }
    if (this.linked && this.pausedForServer) {
      this.pausedForServer = false;
      this.client.socket.resume();
    }
  }

  private pausedForServer = false;
  private stashed = 0;

  private attach(server: ServerConnection): void {
    this.current = server;
    this.unnamedHere = false;
    this.serverSocket = server.socket;
    if (this.serverScanner?.atBoundary !== true) this.serverScanner = this.newServerScanner();
    this.client.attached(server);
    if (this.statements !== undefined) this.statements.serverId = server.id;
    server.relayTo(this);
  }

  /** Gives the server connection back: ReadyForQuery `I`, nothing owed, nothing pinned. */
  private release(reason: "idle" | "clientClosed" | "error"): void {
    const server = this.current;
    if (server === undefined) return;
    server.relayTo(undefined);
    this.current = undefined;
    this.serverSocket = undefined;
    this.replies.clear();
    // The next server connection gets a fresh scanner (attach): a waiting client holds none.
    this.serverScanner = undefined;
    server.settings.adoptFrom(this.state!);
    this.client.released(server, reason);
    this.pooled!.pool.release(server);
  }
}
