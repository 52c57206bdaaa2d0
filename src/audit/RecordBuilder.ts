import type { ProxyEvent } from "../runtime/EventSink.ts";
import type { AuditEvent, FoldedTransition } from "./AuditEvent.ts";
import { type EventOfOptions, eventOf, SessionContexts } from "./eventOf.ts";
import { formatEpochMs } from "./timestamp.ts";

/**
 * Turns the stream of ProxyEvents into audit events, folding state transitions into the
 * statement records they belong to: the transitions of a session's client machine and of its
 * server connection's machine since their previous record ride on the next `statement` record
 * (`transitions`), so a transaction costs one record rather than five. Transitions that no
 * statement takes — the session's start and end, a server connection between clients, or any
 * held longer than `holdMs` — are written as `transition` records before the next record of
 * their connection, so every transition is recorded once, in order, with its own time.
 */

interface Held {
  readonly at: number;
  readonly t: FoldedTransition;
}

export interface RecordBuilderOptions extends EventOfOptions {
  /** Longest a transition waits for a statement to fold into (default 250 ms). */
  readonly holdMs?: number;
  /** Off: every transition is its own record, as before folding existed. */
  readonly fold?: boolean;
}

export class RecordBuilder {
  readonly #o: RecordBuilderOptions;
  readonly #ctx = new SessionContexts();
  readonly #held = new Map<string, Held[]>();
  /** The server connection a client connection last used: its transitions flush with the session's. */
  readonly #serverOf = new Map<string, string>();
  /** When each (session, server) checkout happened, for `heldMs`. */
  readonly #checkedOut = new Map<string, number>();
  readonly #holdMs: number;

  constructor(o: RecordBuilderOptions) {
    this.#o = o;
    this.#holdMs = o.holdMs ?? 250;
  }

  /** Transitions waiting for a statement. */
  get holding(): number {
    let n = 0;
    for (const h of this.#held.values()) n += h.length;
    return n;
  }

  /** Adds the records `e` (stamped `at`, epoch ms) gives to `out`. */
  add(e: ProxyEvent, at: number, out: AuditEvent[]): void {
    if (e.kind === "transition") {
      // Members in sorted order, so the record writes natively (recordJson.ts).
      const t = { cause: e.cause, from: e.from, machine: e.machine, to: e.to, ts: formatEpochMs(at) };
      if (this.#o.fold === false) out.push(this.#standalone(e.connectionId, t));
      else this.#hold(e.connectionId, { at, t });
      return;
    }
    this.#ctx.update(e);
    const ts = formatEpochMs(at);
    if (e.kind === "statement") {
      const folded = this.#take(e.conn, e.server);
      if (e.server !== undefined) this.#serverOf.set(e.conn, e.server);
      const ev = eventOf(e, ts, this.#ctx, this.#o);
      if (ev !== undefined) {
        // eventOf's object is new and ours: the folded transitions join it rather than a copy of it.
        if (folded !== undefined) (ev as { transitions?: FoldedTransition[] }).transitions = folded;
        out.push(ev);
      }
      return;
    }
    const conn = "conn" in e ? e.conn : undefined;
    if (conn !== undefined) {
      this.#flush(conn, out);
      const server = "server" in e ? e.server : this.#serverOf.get(conn);
      if (server !== undefined) this.#flush(server, out);
    }
    const ev = this.#poolOrEvent(e, ts, at);
    if (ev !== undefined) out.push(ev);
    if (e.kind === "connectionClosed") {
      this.#ctx.forget(e.conn);
      this.#checkedOut.delete(`${e.conn} ${this.#serverOf.get(e.conn)}`);
      this.#serverOf.delete(e.conn);
    }
  }

  /** Writes out transitions held longer than `holdMs` before `now`, or all of them. */
  flushHeld(out: AuditEvent[], now = Number.POSITIVE_INFINITY): void {
    for (const [conn, h] of this.#held) if (now - h[0]!.at >= this.#holdMs) this.#flush(conn, out);
  }

  #hold(conn: string, h: Held): void {
    const list = this.#held.get(conn);
    if (list === undefined) this.#held.set(conn, [h]);
    else list.push(h);
  }

  #flush(conn: string, out: AuditEvent[]): void {
    const list = this.#held.get(conn);
    if (list === undefined) return;
    this.#held.delete(conn);
    for (const h of list) out.push(this.#standalone(conn, h.t));
  }

  #standalone(conn: string, t: FoldedTransition): AuditEvent {
    return {
      ...this.#ctx.envelope(conn, t.ts),
      kind: "transition",
      machine: t.machine,
      from: t.from,
      to: t.to,
      cause: t.cause,
    };
  }

  /** The held transitions of a session and its server connection, merged in time order. */
  #take(conn: string, server: string | undefined): FoldedTransition[] | undefined {
    const a = this.#held.get(conn);
    const b = server === undefined ? undefined : this.#held.get(server);
    if (a !== undefined) this.#held.delete(conn);
    if (b !== undefined) this.#held.delete(server!);
    if (b === undefined) return a?.map((h) => h.t);
    if (a === undefined) return b.map((h) => h.t);
    const out: FoldedTransition[] = [];
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      if (j >= b.length || (i < a.length && a[i]!.at <= b[j]!.at)) out.push(a[i++]!.t);
      else out.push(b[j++]!.t);
    }
    return out;
  }

  #poolOrEvent(e: ProxyEvent, ts: string, at: number): AuditEvent | undefined {
    if (e.kind === "poolCheckout") {
      this.#serverOf.set(e.conn, e.server);
      this.#checkedOut.set(`${e.conn} ${e.server}`, at);
    } else if (e.kind === "poolRelease") {
      const key = `${e.conn} ${e.server}`;
      const since = this.#checkedOut.get(key);
      this.#checkedOut.delete(key);
      const ev = eventOf(e, ts, this.#ctx, this.#o);
      return since === undefined || ev === undefined
        ? ev
        : ({ ...ev, heldMs: Math.max(0, Math.round((at - since) * 1000) / 1000) } as AuditEvent);
    }
    return eventOf(e, ts, this.#ctx, this.#o);
  }
}
