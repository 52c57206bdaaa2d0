import { type AnyStateMachine, initialTransition, type SnapshotFrom, transition } from "xstate";
import type { ClientAction, ServerAction } from "./actions.ts";
import { type ConnectionMachine, connectionMachine } from "./connectionMachine.ts";
import type { ConnectionEvent } from "./events.ts";
import type { ServerEvent } from "./serverEvents.ts";
import { type ServerMachine, serverMachine } from "./serverMachine.ts";

/** Which machine a transition belongs to: the client connection's or the server connection's. */
export type MachineName = "client" | "server";

/** A change of state, as the audit pipeline and the logs receive it. */
export interface Transition {
  readonly connectionId: string;
  readonly machine: MachineName;
  readonly from: string;
  readonly to: string;
  readonly cause: string;
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

/** One step of a machine: where it leads and what the host must do, as XState answered once. */
interface Step<A> {
  readonly to: Node<A>;
  readonly actions: readonly A[];
  /** Nothing changes and nothing is done: most relayed messages in a busy state. */
  readonly idle: boolean;
}

interface Node<A> {
  readonly key: string;
  readonly snapshot: SnapshotFrom<AnyStateMachine>;
  readonly final: boolean;
  readonly violation: boolean;
  readonly next: Map<object, Step<A>>;
}

const NONE: readonly never[] = Object.freeze([]);

/** Actions as plain frozen values: XState's executable objects carry closures the host never needs. */
const plainActions = <A>(actions: readonly { type: string; params?: unknown }[]): readonly A[] =>
  actions.length === 0
    ? NONE
    : (Object.freeze(
        actions.map((a) =>
          Object.freeze(
            a.params === undefined ? { type: a.type } : { type: a.type, params: Object.freeze(a.params) },
          ),
        ),
      ) as readonly A[]);

/**
 * The cache of one machine: state nodes by key, each with its steps by event identity. XState's
 * interpreter costs about 3.5 µs per event, far too much for a message path; because guards read
 * only the event and events are interned constants, `transition(machine, state, event)` is a pure
 * function of two identities, asked once per pair and cached with its actions.
 */
export class MachineGraph<E extends object, A> {
  readonly machine: AnyStateMachine;
  private readonly nodes = new Map<string, Node<A>>();
  readonly initial: Node<A>;
  readonly initialActions: readonly A[];

  constructor(machine: AnyStateMachine) {
    this.machine = machine;
    const [snapshot, actions] = initialTransition(machine);
    this.initial = this.nodeFor(snapshot);
    this.initialActions = plainActions<A>(actions);
  }

  private nodeFor(snapshot: SnapshotFrom<AnyStateMachine>): Node<A> {
    const key = stateKey(snapshot.value);
    let node = this.nodes.get(key);
    if (node === undefined) {
      node = {
        key,
        snapshot,
        final: snapshot.status === "done",
        violation: key === "violation",
        next: new Map(),
      };
      this.nodes.set(key, node);
    }
    return node;
  }

  step(from: Node<A>, event: E): Step<A> {
    let s = from.next.get(event);
    if (s === undefined) {
      const [snapshot, actions] = transition(this.machine, from.snapshot, event as never);
      const to = this.nodeFor(snapshot);
      const acts = plainActions<A>(actions);
      s = { to, actions: acts, idle: to === from && acts.length === 0 };
      from.next.set(event, s);
    }
    return s;
  }
}

export const clientGraph = new MachineGraph<ConnectionEvent, ClientAction>(connectionMachine);
export const serverGraph = new MachineGraph<ServerEvent, ServerAction>(serverMachine);

/** Whoever hosts a machine executes its actions (an object, so a host needs no closure for it). */
export interface ActionHost<A> {
  exec(action: A): void;
}

/**
 * Runs one machine for one connection: two Map lookups per event, then the cached actions are
 * handed to the host in order. A state change is emitted as a Transition before the actions run,
 * so the audit trail shows the decision ahead of its effects.
 */
export class MachineRunner<E extends object = ConnectionEvent, A = ClientAction> {
  readonly connectionId: string;
  readonly name: MachineName;
  private readonly graph: MachineGraph<E, A>;
  private node: Node<A>;
  private host: ActionHost<A> | undefined;
  private readonly listener: TransitionListener | undefined;
  private running = false;
  private queued: E[] | undefined;

  constructor(
    connectionId: string,
    listener?: TransitionListener,
    graph: MachineGraph<E, A> = clientGraph as unknown as MachineGraph<E, A>,
    name: MachineName = "client",
  ) {
    this.connectionId = connectionId;
    this.listener = listener;
    this.graph = graph;
    this.name = name;
    this.node = graph.initial;
  }

  /** Attaches the executor of actions and runs the initial state's entry actions. */
  start(host: ActionHost<A>): void {
    this.host = host;
    for (const a of this.graph.initialActions) host.exec(a);
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

  /**
   * Applies an event, executes its actions, and returns the new state key. An event sent by an
   * action while actions run waits its turn, as in XState's own mailbox, so every transition's
   * actions run whole and in order; the key returned is then the state before the queued event.
   */
  send(event: E): string {
    if (this.running) {
      this.enqueue(event);
      return this.node.key;
    }
    const step = this.graph.step(this.node, event);
    if (!step.idle) this.run(event, step);
    return this.node.key;
  }

  /**
   * Applies `event` unless it leads to `violation`, in which case nothing happens and false is
   * returned: the caller then ends the connection with the reason it alone knows. One lookup.
   */
  sendUnlessViolation(event: E): boolean {
    if (this.running) {
      this.enqueue(event);
      return true;
    }
    const step = this.graph.step(this.node, event);
    if (step.idle) return true;
    if (step.to.violation) return false;
    this.run(event, step);
    return true;
  }

  private enqueue(event: E): void {
    if (this.queued === undefined) this.queued = [];
    this.queued.push(event);
  }

  private run(event: E, step: Step<A>): void {
    // A change of state without actions cannot re-enter: no bookkeeping needed.
    if (step.actions.length === 0) {
      this.apply(event, step);
      return;
    }
    this.running = true;
    try {
      this.apply(event, step);
      const q = this.queued;
      if (q !== undefined) {
        for (let i = 0; i < q.length; i++) this.apply(q[i]!, this.graph.step(this.node, q[i]!));
        this.queued = undefined;
      }
    } finally {
      // A throwing action must not leave its queued events to be applied after a later one.
      this.running = false;
      this.queued = undefined;
    }
  }

  private apply(event: E, step: Step<A>): void {
    const from = this.node;
    const to = step.to;
    if (to !== from) {
      this.node = to;
      this.listener?.({
        connectionId: this.connectionId,
        machine: this.name,
        from: from.key,
        to: to.key,
        cause: (event as { type: string }).type,
        at: Date.now(),
      });
    }
    const actions = step.actions;
    const host = this.host;
    if (host !== undefined) for (let i = 0; i < actions.length; i++) host.exec(actions[i]!);
  }

  /** What `event` would do from the current state, without doing it: for tests and diagrams. */
  peek(event: E): { readonly to: string; readonly actions: readonly A[] } {
    const s = this.graph.step(this.node, event);
    return { to: s.to.key, actions: s.actions };
  }
}

export type ClientRunner = MachineRunner<ConnectionEvent, ClientAction>;
export type ServerRunner = MachineRunner<ServerEvent, ServerAction>;

export const serverRunner = (connectionId: string, listener?: TransitionListener): ServerRunner =>
  new MachineRunner<ServerEvent, ServerAction>(connectionId, listener, serverGraph, "server");

export type { ConnectionMachine, ServerMachine };
