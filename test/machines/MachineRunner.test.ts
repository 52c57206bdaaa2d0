import { fc, test } from "@fast-check/vitest";
import { getShortestPaths } from "@xstate/graph";
import { describe, expect, it } from "vitest";
import { type AnyStateNode, createActor, initialTransition, type SnapshotFrom, transition } from "xstate";
import { type ConnectionMachine, connectionMachine } from "../../src/machines/connectionMachine.ts";
import { allEvents, type ConnectionEvent, Events, ReadyForQuery } from "../../src/machines/events.ts";
import { MachineRunner, stateKey, type Transition } from "../../src/machines/MachineRunner.ts";

/** Every leaf state of the machine as a dotted key, read from the definition itself. */
const leafKeys = (node: AnyStateNode = connectionMachine.root, prefix = ""): string[] => {
  const children = Object.values(node.states) as AnyStateNode[];
  if (children.length === 0) return [prefix];
  return children.flatMap((c) => leafKeys(c, prefix === "" ? c.key : `${prefix}.${c.key}`));
};

type Snap = SnapshotFrom<ConnectionMachine>;
const initialSnapshot: Snap = initialTransition(connectionMachine)[0];

/** A runner that records what it emits. */
const recorded = (id = "c-test") => {
  const emitted: Transition[] = [];
  const runner = new MachineRunner(id, (t) => emitted.push(t));
  return { runner, emitted };
};

/** One shortest sequence of events from the initial state to each reachable state (by key). */
const shortestEventsTo: ReadonlyMap<string, readonly ConnectionEvent[]> = (() => {
  const paths = getShortestPaths(connectionMachine, {
    events: allEvents as ConnectionEvent[],
    serializeState: (s) => stateKey(s.value),
  });
  const out = new Map<string, ConnectionEvent[]>();
  for (const p of paths) {
    const key = stateKey(p.state.value);
    const events = p.steps.map((s) => s.event);
    const known = out.get(key);
    if (known === undefined || known.length > events.length) out.set(key, events);
  }
  return out;
})();

/** A runner already moved to `key` along a shortest path, with its emissions cleared. */
const runnerIn = (key: string) => {
  const events = shortestEventsTo.get(key);
  if (events === undefined) throw new Error(`no path to ${key}`);
  const r = recorded();
  for (const e of events) r.runner.send(e);
  expect(r.runner.state, `setting up ${key}`).toBe(key);
  r.emitted.length = 0;
  return r;
};

const ready = [Events.Startup, Events.ClientAuthOk, Events.UpstreamReady] as const;
const busyPaths: Record<string, readonly ConnectionEvent[]> = {
  "busy.simpleQuery": [...ready, Events.Query],
  "busy.extendedQuery": [...ready, Events.Parse, Events.Sync],
  "busy.copy.done": [...ready, Events.Query, Events.CopyInResponse, Events.CopyDone],
};
const runnerAlong = (events: readonly ConnectionEvent[]) => {
  const r = recorded();
  for (const e of events) r.runner.send(e);
  r.emitted.length = 0;
  return r;
};

describe("MachineRunner agrees with the XState interpreter", () => {
  /**
   * Each step picks any event at all (mostly violations) now and then, an event the current
   * state handles without a violation sometimes, and usually one that keeps the connection
   * alive, so runs reach deep states such as busy.copy.* as well as every way out.
   */
  const step = fc.noBias(fc.record({ tier: fc.integer({ min: 0, max: 19 }), pick: fc.nat(1 << 20) }));

  const ends = new Set(["violation", "terminating", "closed"]);
  /** Per state: the non-violating events, and the live events grouped by the state they lead to. */
  const pools = new Map<string, { calm: ConnectionEvent[]; alive: ConnectionEvent[][] }>();
  const poolsFor = (snap: Snap) => {
    const key = stateKey(snap.value);
    let p = pools.get(key);
    if (p === undefined) {
      const byTarget = new Map<string, ConnectionEvent[]>();
      const calm: ConnectionEvent[] = [];
      for (const e of allEvents) {
        const next = stateKey(transition(connectionMachine, snap, e)[0].value);
        if (next !== "violation") calm.push(e);
        if (!ends.has(next)) byTarget.set(next, [...(byTarget.get(next) ?? []), e]);
      }
      p = { calm, alive: [...byTarget.values()] };
      pools.set(key, p);
    }
    return p;
  };
  /** Live events are chosen by target state first, so rare targets (busy.copy.in) come up often. */
  const choose = (snap: Snap, tier: number, pick: number): ConnectionEvent => {
    const { calm, alive } = poolsFor(snap);
    const from = (list: readonly ConnectionEvent[]) => list[pick % list.length]!;
    if (tier < 3 || calm.length === 0) return from(allEvents);
    if (tier < 6 || alive.length === 0) return from(calm);
    const group = alive[pick % alive.length]!;
    return group[Math.floor(pick / alive.length) % group.length]!;
  };

  const visited = new Set<string>();

  test.prop([fc.array(step, { minLength: 1, maxLength: 80, size: "max" })], { numRuns: 300 })(
    "state after every event, and a Transition exactly when the state key changes",
    (steps) => {
      const id = "c-prop";
      const emitted: Transition[] = [];
      const runner = new MachineRunner(id, (t) => emitted.push(t));
      const actor = createActor(connectionMachine).start();
      expect(runner.state).toBe(stateKey(actor.getSnapshot().value));
      for (const s of steps) {
        const snap = actor.getSnapshot();
        const event = choose(snap, s.tier, s.pick);
        const before = runner.state;
        const emittedBefore = emitted.length;
        const t0 = Date.now();
        const returned = runner.send(event);
        const t1 = Date.now();
        // A final actor takes no more events; the runner must stay put as well.
        if (snap.status === "active") actor.send(event);
        const expected = stateKey(actor.getSnapshot().value);
        const where = `${before} --${JSON.stringify(event)}-->`;
        expect(returned, where).toBe(expected);
        expect(runner.state, where).toBe(expected);
        expect(runner.done, where).toBe(actor.getSnapshot().status === "done");
        const fresh = emitted.slice(emittedBefore);
        if (expected === before) {
          expect(fresh, `${where} must not emit`).toEqual([]);
        } else {
          expect(fresh, where).toHaveLength(1);
          const t = fresh[0]!;
          expect({ connectionId: t.connectionId, from: t.from, to: t.to, cause: t.cause }, where).toEqual({
            connectionId: id,
            from: before,
            to: expected,
            cause: event.type,
          });
          expect(t.at).toBeGreaterThanOrEqual(t0);
          expect(t.at).toBeLessThanOrEqual(t1);
        }
        visited.add(expected);
      }
      actor.stop();
    },
  );

  it("the generator above explores every state of the machine", () => {
    // Runs after the property: a weak generator would make the comparison above hollow.
    const missing = leafKeys().filter((k) => !visited.has(k));
    expect(missing).toEqual([]);
  });
});

describe("MachineRunner: specific rules of the connection machine", () => {
  it("starts in startup and walks the trust login to ready.idle", () => {
    const { runner, emitted } = recorded("c1");
    expect(runner.state).toBe("startup");
    for (const e of ready) runner.send(e);
    expect(runner.state).toBe("ready.idle");
    expect(emitted.map((t) => [t.from, t.to, t.cause])).toEqual([
      ["startup", "authenticating.client", "Startup"],
      ["authenticating.client", "authenticating.upstream", "ClientAuthOk"],
      ["authenticating.upstream", "ready.idle", "UpstreamReady"],
    ]);
    expect(emitted.every((t) => t.connectionId === "c1")).toBe(true);
  });

  it("Query during busy.copy.in is a violation", () => {
    const { runner, emitted } = runnerAlong([...ready, Events.Query, Events.CopyInResponse]);
    expect(runner.state).toBe("busy.copy.in");
    expect(runner.send(Events.Query)).toBe("violation");
    expect(emitted).toMatchObject([{ from: "busy.copy.in", to: "violation", cause: "Query" }]);
  });

  it.each(["Parse", "Bind", "Execute", "FunctionCall", "CopyInResponse"] as const)(
    "%s during busy.copy.in is a violation too",
    (type) => {
      const { runner } = runnerAlong([...ready, Events.Query, Events.CopyInResponse]);
      expect(runner.send(Events[type])).toBe("violation");
    },
  );

  it.each(["Flush", "Sync"] as const)("%s during busy.copy.in is accepted without change", (type) => {
    const { runner, emitted } = runnerAlong([...ready, Events.Query, Events.CopyInResponse]);
    expect(runner.send(Events[type])).toBe("busy.copy.in");
    expect(emitted).toEqual([]);
  });

  it.each(["ready.idle", "ready.inTransaction", "ready.failed"])(
    "CopyDone and CopyFail in %s change nothing",
    (key) => {
      const { runner, emitted } = runnerIn(key);
      expect(runner.send(Events.CopyDone)).toBe(key);
      expect(runner.send(Events.CopyFail)).toBe(key);
      expect(emitted).toEqual([]);
    },
  );

  it.each(Object.keys(busyPaths))("ReadyForQuery with more=true keeps %s", (key) => {
    for (const status of ["I", "T", "E"] as const) {
      const { runner, emitted } = runnerAlong(busyPaths[key]!);
      expect(runner.state).toBe(key);
      expect(runner.send(ReadyForQuery[status][1])).toBe(key);
      expect(emitted).toEqual([]);
    }
  });

  it.each(Object.keys(busyPaths))("ReadyForQuery(T) from %s goes to ready.inTransaction", (key) => {
    const { runner, emitted } = runnerAlong(busyPaths[key]!);
    expect(runner.send(ReadyForQuery.T[0])).toBe("ready.inTransaction");
    expect(emitted).toMatchObject([{ from: key, to: "ready.inTransaction", cause: "ReadyForQuery" }]);
  });

  it("ReadyForQuery(I) and (E) from busy go to ready.idle and ready.failed", () => {
    expect(runnerAlong(busyPaths["busy.simpleQuery"]!).runner.send(ReadyForQuery.I[0])).toBe("ready.idle");
    expect(runnerAlong(busyPaths["busy.simpleQuery"]!).runner.send(ReadyForQuery.E[0])).toBe("ready.failed");
  });

  it("ReadyForQuery in busy.copy.in (PostgreSQL ended COPY FROM STDIN on bad data) returns to ready", () => {
    // PostgreSQL answers a bad CopyData row with ErrorResponse and, for a simple Query, an
    // immediate ReadyForQuery, while the client is still in COPY IN. That is legal traffic.
    for (const [status, key] of [
      ["I", "ready.idle"],
      ["E", "ready.failed"],
    ] as const) {
      const { runner } = runnerAlong([...ready, Events.Query, Events.CopyInResponse]);
      expect(runner.send(ReadyForQuery[status][0]), `ReadyForQuery(${status})`).toBe(key);
    }
  });

  it.each([
    "ready.idle",
    "ready.inTransaction",
    "ready.failed",
    "busy.simpleQuery",
    "busy.extendedQuery",
    "busy.copy.in",
    "busy.copy.out",
    "busy.copy.both",
    "busy.copy.done",
  ])("Terminate in %s goes to terminating", (key) => {
    const { runner, emitted } = runnerIn(key);
    expect(runner.send(Events.Terminate)).toBe("terminating");
    expect(emitted).toMatchObject([{ from: key, to: "terminating", cause: "Terminate" }]);
    // …and from there only the end of the sockets moves it.
    expect(runner.send(Events.Query)).toBe("terminating");
    expect(runner.send(Events.ClientClosed)).toBe("closed");
    expect(runner.done).toBe(true);
  });

  it("every state reachable, and every state but closed/terminating/violation turns UnknownMessage into a violation", () => {
    const all = leafKeys();
    // The machine reaches every state it declares, so the loop below skips none.
    expect([...shortestEventsTo.keys()].sort()).toEqual([...all].sort());
    const ends = new Set(["closed", "terminating", "violation"]);
    for (const key of all) {
      const { runner, emitted } = runnerIn(key);
      const after = runner.send(Events.UnknownMessage);
      if (ends.has(key)) {
        expect(after, key).toBe(key);
        expect(emitted, key).toEqual([]);
      } else {
        expect(after, key).toBe("violation");
        expect(emitted, key).toMatchObject([{ from: key, to: "violation", cause: "UnknownMessage" }]);
      }
    }
  });

  it("closed is final: nothing moves it and nothing is emitted", () => {
    const { runner, emitted } = runnerIn("closed");
    expect(runner.done).toBe(true);
    for (const e of allEvents) expect(runner.send(e)).toBe("closed");
    expect(emitted).toEqual([]);
  });

  it("in() matches a state and its ancestors only on whole path segments", () => {
    const { runner } = runnerAlong([...ready, Events.Query, Events.CopyInResponse]);
    expect(runner.in("busy")).toBe(true);
    expect(runner.in("busy.copy")).toBe(true);
    expect(runner.in("busy.copy.in")).toBe(true);
    expect(runner.in("busy.cop")).toBe(false);
    expect(runner.in("ready")).toBe(false);
  });

  it("runners share cached transitions but not their current state", () => {
    const a = runnerAlong([...ready, Events.Query]);
    const b = recorded("c-other");
    expect(b.runner.state).toBe("startup");
    expect(a.runner.state).toBe("busy.simpleQuery");
    b.runner.send(Events.Startup);
    expect(a.runner.state).toBe("busy.simpleQuery");
    expect(b.emitted).toMatchObject([{ connectionId: "c-other" }]);
  });

  it("the initial state of a runner is the machine's initial state", () => {
    expect(new MachineRunner("x").state).toBe(stateKey(initialSnapshot.value));
  });
});
