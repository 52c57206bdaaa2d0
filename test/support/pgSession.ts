import { connect } from "node:net";
import {
  encodeBind,
  encodeClose,
  encodeDescribe,
  encodeExecute,
  encodeFlush,
  encodeParse,
  encodeQuery,
  encodeSync,
  encodeTerminate,
} from "../../src/protocol/frontend.ts";
import { encodeCancelRequest, encodeStartup } from "../../src/protocol/startup.ts";
import { fieldsOf, scramExchange } from "./hostile.ts";
import { WireClient } from "./wire.ts";

/**
 * A logged-in raw protocol session for pooling tests: exact message sequences go out, every
 * backend message comes back in order, so a test can say what a pooler must (not) inject.
 */

export interface Reply {
  readonly type: string;
  readonly msg: Buffer;
}

/** Frontend messages by name, built with pgwarden's own encoders. */
export const msg = {
  parse: (name: string, query: string, paramTypes: readonly number[] = []) =>
    encodeParse({ name, query, paramTypes }),
  bind: (statement: string, params: readonly (string | null)[] = [], portal = "") =>
    encodeBind({
      portal,
      statement,
      paramFormats: [],
      params: params.map((p) => (p === null ? null : Buffer.from(p, "utf8"))),
      resultFormats: [],
    }),
  describeStatement: (name: string) => encodeDescribe({ target: "S", name }),
  describePortal: (name = "") => encodeDescribe({ target: "P", name }),
  execute: (portal = "", maxRows = 0) => encodeExecute({ portal, maxRows }),
  closeStatement: (name: string) => encodeClose({ target: "S", name }),
  sync: encodeSync,
  flush: encodeFlush,
  query: encodeQuery,
} as const;

/** SQLSTATE, message and severity of an ErrorResponse. */
export const errorOf = (m: Reply): { code: string; message: string; severity: string } => {
  const f = fieldsOf(m.msg);
  return { code: f.get("C") ?? "", message: f.get("M") ?? "", severity: f.get("V") ?? f.get("S") ?? "" };
};

/** The text columns of a DataRow. */
export const dataRow = (m: Reply): (string | null)[] => {
  const n = m.msg.readInt16BE(5);
  const out: (string | null)[] = [];
  let p = 7;
  for (let i = 0; i < n; i++) {
    const len = m.msg.readInt32BE(p);
    p += 4;
    if (len < 0) out.push(null);
    else {
      out.push(m.msg.toString("utf8", p, p + len));
      p += len;
    }
  }
  return out;
};

export interface QueryResult {
  readonly rows: (string | null)[][];
  readonly error: { code: string; message: string; severity: string } | undefined;
  /** Transaction status of the ReadyForQuery that ended it. */
  readonly status: string;
  readonly replies: readonly Reply[];
}

/** Summarises the replies of one or more requests ending in ReadyForQuery. */
export const resultOf = (replies: readonly Reply[]): QueryResult => {
  const error = replies.find((r) => r.type === "E");
  const last = replies.at(-1);
  return {
    rows: replies.filter((r) => r.type === "D").map(dataRow),
    error: error === undefined ? undefined : errorOf(error),
    status: last?.type === "Z" ? String.fromCharCode(last.msg[5]!) : "?",
    replies,
  };
};

/** Message types in order, e.g. "1 2 T D C Z", for readable assertions. */
export const typesOf = (replies: readonly Reply[]): string => replies.map((r) => r.type).join(" ");

export interface LoginOptions {
  readonly port: number;
  readonly user: string;
  readonly database: string;
  /** SCRAM when the server asks for it; trust needs none. */
  readonly password?: string;
  readonly parameters?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

export class PgSession {
  readonly wire: WireClient;
  /** Bytes already handed to a caller: replies are read from here on. */
  private read = 0;
  processId = 0;
  secret: Buffer = Buffer.alloc(0);
  readonly port: number;

  private constructor(wire: WireClient, port: number) {
    this.wire = wire;
    this.port = port;
  }

  /** Opens a connection, sends the startup packet and completes authentication. */
  static async login(o: LoginOptions): Promise<PgSession> {
    const wire = await WireClient.open(o.port);
    const s = new PgSession(wire, o.port);
    try {
      wire.send(
        encodeStartup(
          new Map([["user", o.user], ["database", o.database], ...Object.entries(o.parameters ?? {})]),
        ),
      );
      const ms = o.timeoutMs ?? 10_000;
      await wire.until(
        (c) => c.messages().some((m) => m.type === "R" || m.type === "E"),
        ms,
        "the first authentication message",
      );
      const first = wire.messages().find((m) => m.type === "R" || m.type === "E")!;
      if (first.type === "R" && first.msg.readInt32BE(5) === 10) {
        if (o.password === undefined) throw new Error("the server asked for SCRAM and no password was given");
        await scramExchange(wire, o.password, ms);
      }
      const replies = await s.untilReady(ms);
      const err = replies.find((r) => r.type === "E");
      if (err !== undefined) {
        const e = errorOf(err);
        throw Object.assign(new Error(`login failed: ${e.code} ${e.message}`), {
          code: e.code,
          severity: e.severity,
        });
      }
      const key = replies.find((r) => r.type === "K");
      if (key !== undefined) {
        s.processId = key.msg.readInt32BE(5);
        s.secret = Buffer.from(key.msg.subarray(9));
      }
      return s;
    } catch (e) {
      wire.close();
      throw e;
    }
  }

  send(...bufs: Buffer[]): void {
    this.wire.send(...bufs);
  }

  /** Replies after the read mark, without moving it. */
  pending(): Reply[] {
    return this.wire.messages(this.read);
  }

  /**
   * Waits for `count` ReadyForQuery (or an ErrorResponse then the close of the connection, as a
   * FATAL ends it) and returns everything up to and including the last, moving the read mark.
   */
  async untilReady(ms = 10_000, count = 1): Promise<Reply[]> {
    const ready = () => this.pending().filter((m) => m.type === "Z").length >= count;
    try {
      await this.wire.until(ready, ms, `${count} ReadyForQuery`);
    } catch (e) {
      const got = this.pending();
      if (this.wire.closed && got.some((m) => m.type === "E")) {
        this.read = this.wire.received.length;
        return got;
      }
      throw new Error(`${(e as Error).message}; got so far: ${typesOf(got) || "nothing"}`);
    }
    const out: Reply[] = [];
    let seen = 0;
    for (const m of this.pending()) {
      out.push(m);
      if (m.type === "Z" && ++seen === count) break;
    }
    this.read += out.reduce((n, m) => n + m.msg.length, 0);
    return out;
  }

  /** Sends messages holding `syncs` Syncs (or Queries) and collects the replies to all of them. */
  async exchange(messages: readonly Buffer[], syncs = 1, ms = 10_000): Promise<Reply[]> {
    this.send(...messages);
    return this.untilReady(ms, syncs);
  }

  /** A simple Query. */
  async query(sql: string, ms = 10_000): Promise<QueryResult> {
    return resultOf(await this.exchange([msg.query(sql)], 1, ms));
  }

  /** The first column of the first row of a simple Query; throws on an error. */
  async value(sql: string): Promise<string | null> {
    const r = await this.query(sql);
    if (r.error !== undefined) throw new Error(`${sql}: ${r.error.code} ${r.error.message}`);
    return r.rows[0]?.[0] ?? null;
  }

  /** The PostgreSQL backend this session's current transaction runs on. */
  async backendPid(): Promise<number> {
    return Number(await this.value("SELECT pg_backend_pid()"));
  }

  /** Sends a CancelRequest with this session's key on a new connection; resolves when it closes. */
  cancel(): Promise<void> {
    return new Promise((resolve) => {
      const s = connect({ port: this.port, host: "127.0.0.1" }, () =>
        s.write(encodeCancelRequest(this.processId, this.secret)),
      );
      s.on("error", () => resolve());
      s.on("close", () => resolve());
    });
  }

  get closed(): boolean {
    return this.wire.closed;
  }

  /** Ends the session politely with Terminate. */
  terminate(): void {
    if (!this.wire.closed) this.wire.send(encodeTerminate());
    this.wire.socket.end();
  }

  /** Drops the socket without a Terminate, as a crashed client would. */
  vanish(): void {
    this.wire.close();
  }
}
