import { sqlstateOf } from "../protocol/backend.ts";
import type { EventSink, StatementObservation } from "../runtime/EventSink.ts";

/**
 * Pairs a link's statement requests with the server's answers and emits one `statement` event
 * per Query, Parse, Bind, Execute and FunctionCall once its sync point is answered. It reads only
 * what the relay already holds (control messages), and exists only while audit wants statements.
 *
 * Extended protocol: without ParseComplete/BindComplete (streamed, never held) an error is
 * attributed to the first unanswered Execute of its sync group, or to the group's last message.
 */

const Q = 0x51;
const P = 0x50;
const B = 0x42;
const E = 0x45;
const F = 0x46;
const S = 0x53;
// Server
const CMD = 0x43;
const SUSPENDED = 0x73;
const EMPTY = 0x49;
const ERR = 0x45;
const RFQ = 0x5a;
const COPY_IN = 0x47;
const COPY_OUT = 0x48;
const COPY_BOTH = 0x57;
/** connection_failure: what a request the connection's end left unanswered is recorded with. */
const CONNECTION_LOST = "08006";

type Message = StatementObservation["message"];
type Writable<T> = { -readonly [K in keyof T]: T[K] };

interface Op {
  message: Message;
  sql?: string;
  statementName?: string;
  portal?: string;
  paramCount?: number;
  paramFormats?: ("text" | "binary")[];
  commandTag?: string;
  rows?: number;
  answered: boolean;
  sqlstate?: string;
  /** A Query or FunctionCall sent inside an extended batch (before its Sync): it ends a group early. */
  inBatch?: boolean;
  readonly t0: number;
}

/** A C string at `pos`: its text and where the next field starts. */
const cstring = (msg: Buffer, pos: number): [string, number] => {
  const end = msg.indexOf(0, pos);
  if (end < 0) throw new RangeError("unterminated string");
  return [msg.toString("utf8", pos, end), end + 1];
};

/** Bind's format codes spelled out per parameter: none means all text, one applies to all. */
const formats = (codes: number[], count: number): ("text" | "binary")[] => {
  const out: ("text" | "binary")[] = [];
  if (codes.length > 1) {
    for (const c of codes) out.push(c === 1 ? "binary" : "text");
    return out;
  }
  const all = codes.length === 1 && codes[0] === 1 ? "binary" : "text";
  for (let i = 0; i < count; i++) out.push(all);
  return out;
};

/** Reads the parts of a request that a record names; a malformed body (PostgreSQL will refuse it) yields only the kind. */
const decodeRequest = (type: number, msg: Buffer, t0: number): Op => {
  const op: Op = { message: "Query", answered: false, t0 };
  try {
    switch (type) {
      case Q:
        op.sql = cstring(msg, 5)[0];
        break;
      case P: {
        op.message = "Parse";
        const [name, p1] = cstring(msg, 5);
        const [sql, p2] = cstring(msg, p1);
        op.statementName = name;
        op.sql = sql;
        op.paramCount = msg.readInt16BE(p2);
        break;
      }
      case B: {
        op.message = "Bind";
        const [portal, p1] = cstring(msg, 5);
        const [name, p2] = cstring(msg, p1);
        op.portal = portal;
        op.statementName = name;
        const nf = msg.readInt16BE(p2);
        const codes: number[] = [];
        for (let i = 0; i < nf; i++) codes.push(msg.readInt16BE(p2 + 2 + 2 * i));
        const count = msg.readInt16BE(p2 + 2 + 2 * nf);
        op.paramCount = count;
        op.paramFormats = formats(codes, count);
        break;
      }
      case E:
        op.message = "Execute";
        op.portal = cstring(msg, 5)[0];
        break;
      case F: {
        op.message = "FunctionCall";
        const nf = msg.readInt16BE(9);
        const codes: number[] = [];
        for (let i = 0; i < nf; i++) codes.push(msg.readInt16BE(11 + 2 * i));
        const count = msg.readInt16BE(11 + 2 * nf);
        op.paramCount = count;
        op.paramFormats = formats(codes, count);
        break;
      }
    }
  } catch {
    // keep what was read
  }
  return op;
};

/** "INSERT 0 5" → 5, "SELECT 3" → 3, "CREATE TABLE" → undefined. */
const rowsOf = (tag: string): number | undefined => {
  const m = / (\d+)$/.exec(tag);
  return m === null ? undefined : Number(m[1]);
};

const answers = (m: Message) => m === "Execute" || m === "Query" || m === "Copy" || m === "FunctionCall";

export class StatementTracker {
  readonly #conn: string;
  #server: string | undefined;
  readonly #sink: EventSink;
  readonly #now: () => number;
  /** Sync groups sent and not yet answered by ReadyForQuery, oldest first. */
  readonly #closed: Op[][] = [];
  /** Extended messages since the last Sync. */
  #open: Op[] = [];

  /** `server`: the server connection's id, so its machine's transitions fold into these records. */
  constructor(
    conn: string,
    sink: EventSink,
    now: () => number = performance.now.bind(performance),
    server?: string,
  ) {
    this.#conn = conn;
    this.#server = server;
    this.#sink = sink;
    this.#now = now;
  }

  /** Pooled modes: the server connection the link holds changes per transaction. */
  set serverId(id: string | undefined) {
    this.#server = id;
  }

  /** The group the server is answering now. */
  #answering(): Op[] {
    return this.#closed[0] ?? this.#open;
  }

  /** A client message the machine accepted and the relay forwards. */
  client(type: number, msg: Buffer): void {
    switch (type) {
      case Q:
      case F: {
        const op = decodeRequest(type, msg, this.#now());
        if (this.#open.length === 0) {
          this.#closed.push([op]);
          return;
        }
        // Inside an extended batch PostgreSQL answers the messages before it, then it, with a
        // ReadyForQuery of its own: they are one group, and the batch goes on after it.
        op.inBatch = true;
        this.#open.push(op);
        this.#closed.push(this.#open);
        this.#open = [];
        return;
      }
      case P:
      case B:
      case E:
        this.#open.push(decodeRequest(type, msg, this.#now()));
        return;
      case S:
        this.#closed.push(this.#open);
        this.#open = [];
        return;
    }
  }

  /**
   * A server message the relay holds: CommandComplete, PortalSuspended, EmptyQueryResponse,
   * ErrorResponse, the COPY switches, ReadyForQuery.
   */
  server(type: number, msg: Buffer): void {
    switch (type) {
      case CMD: {
        const op = this.#answering().find((o) => !o.answered && answers(o.message));
        if (op === undefined) return;
        const [tag] = cstring(msg, 5);
        op.commandTag = tag;
        const rows = rowsOf(tag);
        if (rows !== undefined) op.rows = rows;
        // A simple Query may run several statements: it stays open for the next tag until ReadyForQuery.
        if (op.message !== "Query" && op.message !== "Copy") op.answered = true;
        return;
      }
      case SUSPENDED:
      case EMPTY: {
        // An Execute ended by its row limit, or of an empty statement: answered, with no tag.
        const op = this.#answering().find((o) => !o.answered && answers(o.message));
        if (op !== undefined && op.message !== "Query") op.answered = true;
        return;
      }
      case ERR: {
        const group = this.#answering();
        const op = group.find((o) => !o.answered && answers(o.message)) ?? group.at(-1);
        if (op === undefined || op.sqlstate !== undefined) return;
        op.sqlstate = sqlstateOf(msg) ?? "XX000";
        op.answered = true;
        return;
      }
      case COPY_IN:
      case COPY_OUT:
      case COPY_BOTH: {
        const op = this.#answering().find((o) => o.message === "Query" && o.sqlstate === undefined);
        if (op !== undefined) op.message = "Copy";
        return;
      }
      case RFQ: {
        const group = this.#closed.shift() ?? this.#open.splice(0);
        const t = this.#now();
        const failedAt = group.findIndex((o) => o.sqlstate !== undefined);
        // After the failed request PostgreSQL skipped the rest of the group: none of it ran.
        for (let i = 0; i < group.length; i++)
          this.#emit(group[i]!, t, failedAt >= 0, failedAt >= 0 && i > failedAt);
        // An error before a Query inside the batch: PostgreSQL skipped it and everything else up
        // to the Sync, whose ReadyForQuery this is. Those groups are answered by it too.
        let last = group.at(-1);
        if (failedAt < 0 || failedAt === group.length - 1) return;
        while (last?.inBatch === true) {
          const skipped = this.#closed.shift() ?? this.#open.splice(0);
          for (const op of skipped) this.#emit(op, t, true, true);
          last = skipped.at(-1);
          if (skipped.length === 0) break;
        }
        return;
      }
    }
  }

  /**
   * The connection ended with requests PostgreSQL received but never answered to the end (the
   * client vanished, the server was lost): each is recorded now, as an error — with the error
   * PostgreSQL sent for it, or 08006 — and with whatever tag it had reached.
   */
  abandon(): void {
    const groups = this.#closed.splice(0);
    if (this.#open.length > 0) groups.push(this.#open);
    this.#open = [];
    const t = this.#now();
    for (const group of groups)
      for (const op of group) {
        op.sqlstate ??= CONNECTION_LOST;
        this.#emit(op, t, true);
      }
  }

  /** Records a statement the relay refused itself (audit blocked): it never reached PostgreSQL. */
  refused(type: number, msg: Buffer, sqlstate: string): void {
    const op = decodeRequest(type, msg, this.#now());
    op.sqlstate = sqlstate;
    this.#emit(op, op.t0, true);
  }

  #emit(op: Op, t: number, groupFailed: boolean, skipped = false): void {
    const outcome =
      op.sqlstate === "57014"
        ? "cancelled"
        : op.sqlstate !== undefined ||
            skipped ||
            (groupFailed && !answers(op.message) && op.commandTag === undefined)
          ? "error"
          : "ok";
    // Members assigned one by one: a spread per optional member costs more than the rest of the record.
    const ev: Writable<StatementObservation> = {
      kind: "statement",
      conn: this.#conn,
      message: op.message,
      durationMs: Math.max(0, Math.round((t - op.t0) * 1000) / 1000),
      outcome,
    };
    if (this.#server !== undefined) ev.server = this.#server;
    if (op.sql !== undefined) ev.sql = op.sql;
    if (op.statementName !== undefined) ev.statementName = op.statementName;
    if (op.portal !== undefined) ev.portal = op.portal;
    if (op.paramCount !== undefined) ev.paramCount = op.paramCount;
    if (op.paramFormats !== undefined) ev.paramFormats = op.paramFormats;
    if (op.commandTag !== undefined) ev.commandTag = op.commandTag;
    if (op.rows !== undefined) ev.rows = op.rows;
    if (op.sqlstate !== undefined) ev.sqlstate = op.sqlstate;
    this.#sink.emit(ev);
  }
}
