import { fc, test } from "@fast-check/vitest";
import { getShortestPaths } from "@xstate/graph";
import { describe, expect, it } from "vitest";
import { type AnyStateMachine, type AnyStateNode, createActor, type SnapshotFrom, transition } from "xstate";
import {
  type MachineName,
  type MachineRunner,
  stateKey,
  type Transition,
} from "../../../src/machines/MachineRunner.ts";

/*
 * What the client and the server machine tests share: the property that a cached MachineRunner
 * agrees with XState's own interpreter on states, transitions and the actions it executes, and
 * small helpers to put a runner in a given state with its actions recorded.
 */

/** An action as both the runner and XState's inspection report it: type, and params if any. */
export interface PlainAction {
  readonly type: string;
  readonly params?: unknown;
}

const plain = (a: { type: string; params?: unknown }): PlainAction =>
  a.params === undefined ? { type: a.type } : { type: a.type, params: a.params };

/** Every leaf state of a machine as a dotted key, read from the definition itself. */
export const leafKeys = (node: AnyStateNode, prefix = ""): string[] => {
  const children = Object.values(node.states) as AnyStateNode[];
  if (children.length === 0) return [prefix];
  return children.flatMap((c) => leafKeys(c, prefix === "" ? c.key : `${prefix}.${c.key}`));
};

export interface MachineSpec<E extends object, A> {
  readonly name: MachineName;
  readonly machine: AnyStateMachine;
  readonly events: readonly E[];
  readonly runner: (id: string, listener: (t: Transition) => void) => MachineRunner<E, A>;
  /** Where the `*` edges lead: the events that do not lead there are the "calm" ones. */
  readonly violation: string;
  /** States that end the connection: live events are those that lead elsewhere. */
  readonly ends: ReadonlySet<string>;
}

/** A runner with everything it emits and every action it executes recorded, started. */
export const recorder = <E extends object, A>(spec: MachineSpec<E, A>, id = "t-test") => {
  const emitted: Transition[] = [];
  const actions: PlainAction[] = [];
  /** Transitions and actions in the order they happened. */
  const log: (string | PlainAction)[] = [];
  const runner = spec.runner(id, (t) => {
    emitted.push(t);
    log.push(`${t.from} -> ${t.to}`);
  });
  let onAction: ((a: A) => void) | undefined;
  runner.start({
    exec: (a) => {
      actions.push(a as PlainAction);
      log.push(a as PlainAction);
      onAction?.(a);
    },
  });
  const clear = () => {
    emitted.length = 0;
    actions.length = 0;
    log.length = 0;
  };
  return {
    runner,
    emitted,
    actions,
    log,
    clear,
    /** Runs `f` for every action executed from now on (after it is recorded). */
    onAction: (f: (a: A) => void) => {
      onAction = f;
    },
  };
};

/** One shortest sequence of events from the initial state to each reachable state (by key). */
export const shortestEvents = <E extends object>(
  machine: AnyStateMachine,
  events: readonly E[],
): ReadonlyMap<string, readonly E[]> => {
  const paths = getShortestPaths(machine, {
    events: events as never,
    serializeState: (s) => stateKey(s.value),
  });
  const out = new Map<string, E[]>();
  for (const p of paths) {
    const key = stateKey(p.state.value);
    const es = p.steps.map((s) => s.event as E);
    const known = out.get(key);
    if (known === undefined || known.length > es.length) out.set(key, es);
  }
  return out;
};

/** The seed of the walks whose coverage is checked (any seed that reaches every state would do). */
const COVERAGE_SEED = 20261201;

/**
 * Registers the property: for random runs of events, after every event the runner's state,
 * `done`, returned key, emitted Transition (exactly when the key changes) and executed actions
 * (type and params, in order) equal what XState's interpreter does — starting with the initial
 * entry actions. A final test checks the generator reached every leaf state.
 */
export const describeAgreement = <E extends { type: string }, A>(spec: MachineSpec<E, A>): void => {
  type Snap = SnapshotFrom<AnyStateMachine>;
  describe(`MachineRunner agrees with the XState interpreter (${spec.name} machine)`, () => {
    /**
     * Each step picks any event at all (mostly violations) now and then, an event the current
     * state handles without a violation sometimes, and usually one that keeps the connection
     * alive, so runs reach deep states such as busy.copy.* as well as every way out.
     */
    const step = fc.noBias(fc.record({ tier: fc.integer({ min: 0, max: 19 }), pick: fc.nat(1 << 20) }));

    /** Per state: the non-violating events, and the live events grouped by the state they lead to. */
    const pools = new Map<string, { calm: E[]; alive: E[][] }>();
    const poolsFor = (snap: Snap) => {
      const key = stateKey(snap.value);
      let p = pools.get(key);
      if (p === undefined) {
        const byTarget = new Map<string, E[]>();
        const calm: E[] = [];
        for (const e of spec.events) {
          const next = stateKey(transition(spec.machine, snap, e as never)[0].value);
          if (next !== spec.violation) calm.push(e);
          if (!spec.ends.has(next)) byTarget.set(next, [...(byTarget.get(next) ?? []), e]);
        }
        p = { calm, alive: [...byTarget.values()] };
        pools.set(key, p);
      }
      return p;
    };
    /** Live events are chosen by target state first, so rare targets (busy.copy.in) come up often. */
    const choose = (snap: Snap, tier: number, pick: number): E => {
      const { calm, alive } = poolsFor(snap);
      const from = (list: readonly E[]) => list[pick % list.length]!;
      if (tier < 3 || calm.length === 0) return from(spec.events);
      if (tier < 6 || alive.length === 0) return from(calm);
      const group = alive[pick % alive.length]!;
      return group[Math.floor(pick / alive.length) % group.length]!;
    };

    const visited = new Set<string>();
    let actionsSeen = 0;

    const run = (steps: readonly { tier: number; pick: number }[], track: boolean) => {
      const id = `${spec.name}-prop`;
      const emitted: Transition[] = [];
      const ran: PlainAction[] = [];
      const runner = spec.runner(id, (t) => emitted.push(t));
      const xstate: PlainAction[] = [];
      const actor = createActor(spec.machine, {
        inspect: (ev) => {
          if (ev.type === "@xstate.action") xstate.push(plain(ev.action));
        },
      });
      runner.start({ exec: (a) => ran.push(plain(a as PlainAction)) });
      actor.start();
      expect(runner.state).toBe(stateKey(actor.getSnapshot().value));
      expect(ran, "initial entry actions").toEqual(xstate);
      if (track) visited.add(runner.state);
      for (const s of steps) {
        const snap = actor.getSnapshot();
        const event = choose(snap, s.tier, s.pick);
        const before = runner.state;
        const emittedBefore = emitted.length;
        ran.length = 0;
        xstate.length = 0;
        const t0 = Date.now();
        const returned = runner.send(event);
        const t1 = Date.now();
        // A final actor takes no more events; the runner must stay put and do nothing as well.
        if (snap.status === "active") actor.send(event);
        const expected = stateKey(actor.getSnapshot().value);
        const where = `${before} --${JSON.stringify(event)}-->`;
        expect(returned, where).toBe(expected);
        expect(runner.state, where).toBe(expected);
        expect(runner.done, where).toBe(actor.getSnapshot().status === "done");
        expect(ran, `${where} actions`).toEqual(xstate);
        if (track) actionsSeen += ran.length;
        const fresh = emitted.slice(emittedBefore);
        if (expected === before) {
          expect(fresh, `${where} must not emit`).toEqual([]);
        } else {
          expect(fresh, where).toHaveLength(1);
          const t = fresh[0]!;
          expect(
            { connectionId: t.connectionId, machine: t.machine, from: t.from, to: t.to, cause: t.cause },
            where,
          ).toEqual({
            connectionId: id,
            machine: spec.name,
            from: before,
            to: expected,
            cause: event.type,
          });
          expect(t.at).toBeGreaterThanOrEqual(t0);
          expect(t.at).toBeLessThanOrEqual(t1);
        }
        if (track) visited.add(expected);
      }
      actor.stop();
    };
    const runs = fc.array(step, { minLength: 1, maxLength: 80, size: "max" });
    // The coverage claim below rests on a fixed seed, so it cannot come and go between runs;
    // the second property keeps exploring new walks every run.
    test.prop([runs], { numRuns: 300, seed: COVERAGE_SEED })(
      "state, Transition and actions after every event (fixed walks)",
      (steps) => run(steps, true),
    );
    test.prop([runs], { numRuns: 300 })(
      "state, Transition and actions after every event (new walks)",
      (steps) => run(steps, false),
    );

    it("the generator above explores every state of the machine, and actions were compared", () => {
      // Runs after the property: a weak generator would make the comparison above hollow.
      const missing = leafKeys(spec.machine.root).filter((k) => !visited.has(k));
      expect(missing).toEqual([]);
      expect(actionsSeen, "actions compared").toBeGreaterThan(100);
    });
  });
};
