import type { Transition } from "../machines/MachineRunner.ts";
import type { ProxyEvent, StatementObservation } from "../runtime/EventSink.ts";

/**
 * What one postMessage carries from the proxy's thread to the audit pipeline's (AuditWorker.ts).
 * Transitions are most of the events — four or five per transaction — and their machine, states
 * and cause come from the machines' finite vocabulary. So a transition travels as four numbers
 * into a dictionary both sides build (each word crosses once) plus its connection id, instead of
 * an object the structured clone writes key by key and the other side rebuilds string by string.
 * A statement — one to three per transaction — travels as the array of its members' values in a
 * fixed order (no member names). Everything else travels as the event object itself; `null` in
 * `events` marks the place of the next compact transition, so the order is kept exactly.
 */
export interface EventBatch {
  readonly events: (ProxyEvent | StatementTuple | null)[];
  /** Emit time of each event, epoch ms (AuditWorker's clock). */
  readonly times: Float64Array;
  /** Per compact transition: machine, from, to, cause as dictionary codes. */
  readonly codes: Int32Array;
  readonly conns: string[];
  /** Per compact transition: its `at`. */
  readonly ats: Float64Array;
  /** Words added to the dictionary since the previous batch, in code order. */
  readonly words: string[];
}

/** A statement's members, in the order its tuple holds their values. */
const STATEMENT_MEMBERS = [
  "conn",
  "message",
  "durationMs",
  "outcome",
  "server",
  "sql",
  "statementName",
  "portal",
  "paramCount",
  "paramFormats",
  "commandTag",
  "rows",
  "sqlstate",
] as const satisfies readonly (keyof StatementObservation)[];
// A member added to StatementObservation and not listed above fails to compile here.
type Unlisted = Exclude<keyof StatementObservation, "kind" | (typeof STATEMENT_MEMBERS)[number]>;
const everyMemberListed: [Unlisted] extends [never] ? true : Unlisted = true;
void everyMemberListed;

/** A statement's members' values by position; `undefined` where the event has none. */
type StatementTuple = unknown[];

/**
 * Built by push, not `map`: `map` makes a holey array, which the structured clone writes and reads
 * index by index as a sparse one; a packed array goes over as one dense run.
 */
const tupleOf = (s: StatementObservation): StatementTuple => {
  const t: unknown[] = [];
  for (const k of STATEMENT_MEMBERS) t.push(s[k]);
  return t;
};

const statementOf = (t: StatementTuple): StatementObservation => {
  const s: Record<string, unknown> = { kind: "statement" };
  for (let i = 0; i < STATEMENT_MEMBERS.length; i++) if (t[i] !== undefined) s[STATEMENT_MEMBERS[i]!] = t[i];
  return s as unknown as StatementObservation;
};

/** Beyond this many words transitions travel as objects: a vocabulary this large is not the machines'. */
const MAX_WORDS = 4096;

/** The proxy's side: collects one tick's events. */
export class EventBatcher {
  #events: (ProxyEvent | StatementTuple | null)[] = [];
  #times: number[] = [];
  #codes: number[] = [];
  #conns: string[] = [];
  #ats: number[] = [];
  #words: string[] = [];
  readonly #dictionary = new Map<string, number>();

  get size(): number {
    return this.#events.length;
  }

  add(event: ProxyEvent, time: number): void {
    this.#events.push(event.kind === "statement" ? tupleOf(event) : event);
    this.#times.push(time);
  }

  addTransition(t: Transition, time: number): void {
    const machine = this.#code(t.machine);
    const from = this.#code(t.from);
    const to = this.#code(t.to);
    const cause = this.#code(t.cause);
    if (machine < 0 || from < 0 || to < 0 || cause < 0) {
      this.add({ kind: "transition", ...t }, time);
      return;
    }
    this.#events.push(null);
    this.#times.push(time);
    this.#codes.push(machine, from, to, cause);
    this.#conns.push(t.connectionId);
    this.#ats.push(t.at);
  }

  /** The batch so far, and a fresh one begun; undefined when there is nothing to send. */
  take(): EventBatch | undefined {
    if (this.#events.length === 0) return undefined;
    const batch: EventBatch = {
      events: this.#events,
      // The constructors copy an array directly; `from` walks it through the iterator protocol.
      times: new Float64Array(this.#times),
      codes: new Int32Array(this.#codes),
      conns: this.#conns,
      ats: new Float64Array(this.#ats),
      words: this.#words,
    };
    this.#events = [];
    this.#times = [];
    this.#codes = [];
    this.#conns = [];
    this.#ats = [];
    this.#words = [];
    return batch;
  }

  /**
   * A batch that could not be sent: its events are lost (the caller counts them), but its new
   * words go out with the next batch, or every later transition would decode to the wrong words.
   */
  undelivered(batch: EventBatch): void {
    this.#words = [...batch.words, ...this.#words];
  }

  #code(word: string): number {
    const c = this.#dictionary.get(word);
    if (c !== undefined) return c;
    if (this.#dictionary.size >= MAX_WORDS) return -1;
    const next = this.#dictionary.size;
    this.#dictionary.set(word, next);
    this.#words.push(word);
    return next;
  }
}

/** The pipeline's side: rebuilds each batch's events, keeping the dictionary across batches. */
export class EventUnbatcher {
  readonly #words: string[] = [];

  /** The batch's events in order; transitions come back as the objects they were. */
  events(batch: EventBatch): ProxyEvent[] {
    for (const w of batch.words) this.#words.push(w);
    const words = this.#words;
    const { codes, conns, ats } = batch;
    const out: ProxyEvent[] = new Array(batch.events.length);
    let j = 0;
    for (let i = 0; i < batch.events.length; i++) {
      const e = batch.events[i];
      if (Array.isArray(e)) {
        out[i] = statementOf(e as StatementTuple);
        continue;
      }
      if (e !== null && e !== undefined) {
        out[i] = e as ProxyEvent;
        continue;
      }
      const c = j * 4;
      out[i] = {
        kind: "transition",
        connectionId: conns[j]!,
        machine: words[codes[c]!] as Transition["machine"],
        from: words[codes[c + 1]!]!,
        to: words[codes[c + 2]!]!,
        cause: words[codes[c + 3]!]!,
        at: ats[j]!,
      };
      j++;
    }
    return out;
  }
}
