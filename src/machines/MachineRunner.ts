import { initialTransition, type SnapshotFrom, transition } from "xstate";
import { type ConnectionMachine, connectionMachine } from "./connectionMachine.ts";
import type { ConnectionEvent, ConnectionEventType } from "./events.ts";

/** A change of state, as the audit pipeline and the logs receive it. */
export interface Transition {
  readonly connectionId: string;
  readonly from: string;
  readonly to: string;
  readonly cause: ConnectionEventType;
  /** Milliseconds since the epoch. */
  readonly at: number;
}

export type TransitionListener = (t: Transition) => void;

/** Flattens a state value to a dotted path: `{ busy: { copy: "in" } }` → `busy.copy.in`. */
export const stateKey = (value: unknown): string => {
  if (typeof value === "string") return value;
  const [k, v] = Object.entries(value as Record<string, unknown>)[0]!;
  return `${k}.${stateKey(v)}`;
};

interface Node {
  readonly key: string;
  readonly snapshot: SnapshotFrom<ConnectionMachine>;
  readonly final: boolean;
  readonly next: Map<ConnectionEvent, Node>;
}

const nodes = new Map<string, Node>();
const nodeFor = (snapshot: SnapshotFrom<ConnectionMachine>): Node => {
  const key = stateKey(snapshot.value);
  let node = nodes.get(key);
  if (node === undefined) {
    node = { key, snapshot, final: snapshot.status === "done", next: new Map() };
    nodes.set(key, node);
  }
  return node;
};

const initial = nodeFor(initialTransition(connectionMachine)[0]);

/**
 * Runs the connection machine for one connection.
 *
 * XState's interpreter costs about 3.5 µs per event here, far too much for a message path that
 * sees several control messages per transaction. Because the machine's guards read only the
 * event and events are interned constants, `transition(machine, state, event)` is a pure function
 * of two identities: the runner asks XState once per (state, event) pair and caches the answer,
 * so every connection follows exactly the machine's semantics at the cost of two Map lookups.
 */
export class MachineRunner {
  readonly connectionId: string;
  private node: Node = initial;
  private readonly listener: TransitionListener | undefined;

  constructor(connectionId: string, listener?: TransitionListener) {
    this.connectionId = connectionId;
    this.listener = listener;
  }

  get state(): string {
    return this.node.key;
  }

  get done(): boolean {
    return this.node.final;
  }

  /** Whether the current state is `path` or inside it (`in("busy")` holds in `busy.copy.in`). */
  in(path: string): boolean {
    const key = this.node.key;
    return key === path || (key.startsWith(path) && key.charCodeAt(path.length) === 0x2e);
  }

  /** Applies an event; returns the new state key. */
  send(event: ConnectionEvent): string {
    const from = this.node;
    let to = from.next.get(event);
    if (to === undefined) {
      to = nodeFor(transition(connectionMachine, from.snapshot, event)[0]);
      from.next.set(event, to);
    }
    if (to !== from) {
      this.node = to;
      this.listener?.({
        connectionId: this.connectionId,
        from: from.key,
        to: to.key,
        cause: event.type,
        at: Date.now(),
      });
    }
    return to.key;
  }
}
