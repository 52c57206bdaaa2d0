import type { Socket } from "node:net";
import { batchWrite } from "../adapters/batchWrite.ts";
import { StatementTracker } from "../audit/StatementTracker.ts";
import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import { type ConnectionEvent, Events, ReadyForQuery } from "../machines/events.ts";
import type { ClientRunner } from "../machines/MachineRunner.ts";
import { ServerEvents } from "../machines/serverEvents.ts";
import { Owed } from "../pool/OwedResponses.ts";
import { encodeError } from "../protocol/backend.ts";
import { DROP, MessageScanner, type ScanPolicy, type Verdict } from "../protocol/MessageScanner.ts";
import { Backend, Frontend, frontendName } from "../protocol/messageTypes.ts";
import {
  auditedClientSessionPolicy,
  auditedServerSessionPolicy,
  clientSessionPolicy,
  serverSessionPolicy,
} from "../protocol/policies.ts";
import { clientEvents, isExtended, isSyncPoint } from "./clientEvents.ts";
import type { EventSink } from "./EventSink.ts";
import type { ServerConnection } from "./ServerConnection.ts";

/** What the client half gives a link: its socket, its machine, and where to report an ending. */
export interface ClientSide {
  readonly id: string;
  readonly socket: Socket;
  readonly machine: ClientRunner;
  /** A violation on either leg: the client half sends 08P01 and both legs close. */
  violation(error: PgwardenError): void;
}

const STATUS: Record<number, "I" | "T" | "E"> = { 73: "I", 84: "T", 69: "E" };
const READY_IDLE = Buffer.from([Backend.ReadyForQuery, 0, 0, 0, 5, 73]);

/** One policy object per size limit, shared by every link: a session holds no tables or closures of its own. */
const shared = (make: (maxMessageBytes: number) => ScanPolicy) => {
  const made = new Map<number, ScanPolicy>();
  return (maxMessageBytes: number): ScanPolicy => {
    let p = made.get(maxMessageBytes);
    if (p === undefined) {
      p = make(maxMessageBytes);
      made.set(maxMessageBytes, p);
    }
    return p;
  };
};
const clientPolicy = shared(clientSessionPolicy);
const serverPolicy = shared(serverSessionPolicy);
const auditedClientPolicy = shared(auditedClientSessionPolicy);
const auditedServerPolicy = shared(auditedServerSessionPolicy);

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
 * chunks it arrived in, one writev per read. In session mode a link lasts for the client's life;
 * the pooling issue unlinks at ReadyForQuery `I` with nothing owed (`server.owed.settled`).
 */
export class Link {
  readonly client: ClientSide;
  readonly server: ServerConnection;
  private readonly serverSocket: Socket;
  private readonly clientScanner: MessageScanner;
  private readonly serverScanner: MessageScanner;
  private readonly toServer: Uint8Array[] = [];
  private readonly toClient: Uint8Array[] = [];
  private readonly bufferLimit: number;
  private linked = true;
  /** Present only while audit records statements: audit off keeps the relay as lean as it was. */
  private readonly statements: StatementTracker | undefined;
  private readonly events: EventSink | undefined;

  constructor(
    client: ClientSide,
    server: ServerConnection,
    limits: { maxMessageBytes: number; maxBuffered: number; events?: EventSink },
  ) {
    this.client = client;
    this.server = server;
    this.serverSocket = server.socket!;
    this.bufferLimit = limits.maxBuffered;
    const events = limits.events;
    if (events?.statements === true) {
      this.events = events;
      this.statements = new StatementTracker(client.id, events);
      this.clientScanner = new MessageScanner(auditedClientPolicy(limits.maxMessageBytes), (type, msg) =>
        this.onClientMessageAudited(type, msg),
      );
      this.serverScanner = new MessageScanner(auditedServerPolicy(limits.maxMessageBytes), (type, msg) =>
        this.onServerMessageAudited(type, msg),
      );
      return;
    }
    this.clientScanner = new MessageScanner(clientPolicy(limits.maxMessageBytes), this.onClientMessage);
    this.serverScanner = new MessageScanner(serverPolicy(limits.maxMessageBytes), this.onServerMessage);
  }

  /** Starts relaying: first what each side sent ahead, then the live streams. */
  start(first: {
    toClient: readonly Uint8Array[];
    serverPending: readonly Buffer[];
    clientPending: readonly Buffer[];
  }): void {
    for (const m of first.toClient) this.toClient.push(m);
    if (!this.replay(first.serverPending, this.onServerMessage, this.toClient)) return;
    this.flushToClient();
    if (!this.replay(first.clientPending, this.onClientMessage, this.toServer)) return;
    this.flushToServer();
    this.client.socket.on("data", this.onClientData);
    this.serverSocket.on("data", this.onServerData);
    this.client.socket.resume();
    this.serverSocket.resume();
  }

  /** Stops relaying in both directions (the connection is ending, or the pool takes the server back). */
  unlink(): void {
    if (!this.linked) return;
    this.linked = false;
    this.client.socket.off("data", this.onClientData);
    this.serverSocket.off("data", this.onServerData);
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
    if (!batchWrite(this.serverSocket, this.toServer, this.client.socket, this.bufferLimit)) this.overLimit();
  }

  private flushToClient(): void {
    if (!batchWrite(this.client.socket, this.toClient, this.serverSocket, this.bufferLimit)) this.overLimit();
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

  private readonly onClientData = (chunk: Buffer): void => {
    let err: PgwardenError | undefined;
    try {
      err = this.clientScanner.scan(chunk, this.toServer);
    } catch (e) {
      // A bug in pgwarden ends this connection, never the process.
      err = internalFailure(e);
    }
    if (err !== undefined) {
      this.toServer.length = 0;
      this.client.violation(err);
      return;
    }
    this.flushToServer();
  };

  private readonly onServerData = (chunk: Buffer): void => {
    let err: PgwardenError | undefined;
    try {
      err = this.serverScanner.scan(chunk, this.toClient);
    } catch (e) {
      err = internalFailure(e);
    }
    // What came before a bad message still reaches the client: an error, often.
    this.flushToClient();
    if (err !== undefined) {
      this.server.machine.send(ServerEvents.ProtocolViolation);
      this.client.violation(
        err.code !== "PGW_PROTOCOL" || err.message.startsWith("PostgreSQL")
          ? err
          : protocolError(`PostgreSQL sent an invalid stream: ${err.message}`),
      );
    }
  };

  /**
   * Audit on: a new statement is refused while the audit trail cannot take records; others are
   * recorded. Methods, wrapped only when audit is on: a link without audit holds no closure for them.
   */
  private onClientMessageAudited(type: number, msg: Buffer): Verdict {
    if (type === Frontend.Query || type === Frontend.Parse || type === Frontend.FunctionCall) {
      const blocked = this.events!.blocked?.();
      if (blocked !== undefined) return this.refuseStatement(type, msg, blocked);
    }
    const v = this.onClientMessage(type, msg);
    if (v === undefined) this.statements!.client(type, msg);
    return v;
  }

  private onServerMessageAudited(type: number, msg: Buffer): Verdict {
    // Seen before the machines move: a ReadyForQuery closes the group its statements belong to.
    this.statements!.server(type, msg);
    return type === Backend.CommandComplete ? undefined : this.onServerMessage(type, msg);
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
    const owed = this.server.owed;
    if (type === Frontend.Parse || m.state !== "ready.idle" || owed.size > 0 || owed.unsynced) return error;
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
  private readonly onClientMessage = (type: number, _msg: Buffer): Verdict => {
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
    // PostgreSQL ignores Flush and Sync during COPY IN: they owe nothing and leave nothing pending.
    if (copyIn) return undefined;
    const owed = this.server.owed;
    if (isSyncPoint(type)) {
      owed.push(Owed.forward);
      owed.unsynced = false;
      this.server.machine.send(ServerEvents.Request);
    } else if (isExtended(type)) owed.unsynced = true;
    return undefined;
  };

  /** Each server control message that changes what the client may do next. */
  private readonly onServerMessage = (type: number, msg: Buffer): PgwardenError | undefined => {
    let event: ConnectionEvent;
    switch (type) {
      case Backend.ReadyForQuery: {
        const status = STATUS[msg.length === 6 ? msg[5]! : 0];
        if (status === undefined) return protocolError("PostgreSQL sent an invalid ReadyForQuery");
        const owed = this.server.owed;
        owed.shift();
        event = ReadyForQuery[status][owed.size > 0 || owed.unsynced ? 1 : 0];
        this.server.machine.send(event);
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
    return undefined;
  };
}
