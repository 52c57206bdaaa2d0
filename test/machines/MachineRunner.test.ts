import { describe, expect, it } from "vitest";
import { initialTransition } from "xstate";
import type { ClientAction } from "../../src/machines/actions.ts";
import { connectionMachine } from "../../src/machines/connectionMachine.ts";
import { allEvents, type ConnectionEvent, Events, ReadyForQuery } from "../../src/machines/events.ts";
import { clientGraph, MachineRunner, stateKey } from "../../src/machines/MachineRunner.ts";
import {
  describeAgreement,
  leafKeys,
  type MachineSpec,
  recorder,
  shortestEvents,
} from "./support/agreement.ts";

const client: MachineSpec<ConnectionEvent, ClientAction> = {
  name: "client",
  machine: connectionMachine,
  events: allEvents,
  runner: (id, listener) => new MachineRunner(id, listener),
  violation: "violation",
  ends: new Set(["violation", "terminating", "closed"]),
};

describeAgreement(client);

const shortestEventsTo = shortestEvents(connectionMachine, allEvents);

/** A started runner with its actions recorded. */
const recorded = (id = "c-test") => recorder(client, id);

/** A runner already moved to `key` along a shortest path, with its records cleared. */
const runnerIn = (key: string) => {
  const events = shortestEventsTo.get(key);
  if (events === undefined) throw new Error(`no path to ${key}`);
  return runnerAlong(events, key);
};

const runnerAlong = (events: readonly ConnectionEvent[], key?: string) => {
  const r = recorded();
  for (const e of events) r.runner.send(e);
  if (key !== undefined) expect(r.runner.state, `setting up ${key}`).toBe(key);
  r.clear();
  return r;
};

const ready = [Events.Startup, Events.ClientAuthOk, Events.UpstreamReady] as const;
const copyIn = [...ready, Events.Query, Events.CopyInResponse] as const;
const busyPaths: Record<string, readonly ConnectionEvent[]> = {
  "busy.simpleQuery": [...ready, Events.Query],
  "busy.extendedQuery": [...ready, Events.Parse, Events.Sync],
  "busy.copy.done": [...ready, Events.Query, Events.CopyInResponse, Events.CopyDone],
};

/** What entering each ending does, in order. */
const terminatingEntry: readonly ClientAction[] = [
  { type: "stopReading" },
  { type: "closeClient" },
  { type: "closeServer" },
  { type: "armDeadline", params: { phase: "linger" } },
];
const violationEntry: readonly ClientAction[] = [
  { type: "stopReading" },
  { type: "sendError", params: { error: "given" } },
  { type: "closeClient" },
  { type: "closeServer" },
  { type: "armDeadline", params: { phase: "linger" } },
];

const live = [
  "authenticating.client",
  "authenticating.upstream",
  "ready.idle",
  "ready.inTransaction",
  "ready.failed",
  "busy.simpleQuery",
  "busy.extendedQuery",
  "busy.copy.in",
  "busy.copy.out",
  "busy.copy.both",
  "busy.copy.done",
];
const relaying = live.filter((k) => !k.startsWith("authenticating"));
const startupStates = ["startup.fresh", "startup.sslRefused", "startup.gssRefused", "startup.bothRefused"];

describe("MachineRunner: the login walk and its actions", () => {
  it("start() runs the root's entry: the login deadline is armed before any byte is read", () => {
    const r = recorder(client, "c0");
    expect(r.runner.state).toBe("startup.fresh");
    expect(r.actions).toEqual([{ type: "armDeadline", params: { phase: "login" } }]);
    expect(r.emitted).toEqual([]);
  });

  it("events sent before start() move the machine but execute nothing", () => {
    const runner = new MachineRunner("c-unstarted");
    expect(runner.send(Events.Startup)).toBe("authenticating.client");
    const ran: ClientAction[] = [];
    runner.start({ exec: (a) => ran.push(a) });
    expect(ran).toEqual([{ type: "armDeadline", params: { phase: "login" } }]);
    runner.send(Events.ClientAuthOk);
    expect(ran.slice(1)).toEqual([{ type: "sendAuthOk" }, { type: "connectServer" }]);
  });

  it("walks the trust login to ready.idle, each step with its actions", () => {
    const r = recorded("c1");
    r.clear();
    r.runner.send(Events.Startup);
    expect(r.actions).toEqual([{ type: "authenticate" }]);
    r.actions.length = 0;
    r.runner.send(Events.ClientAuthOk);
    expect(r.actions).toEqual([{ type: "sendAuthOk" }, { type: "connectServer" }]);
    r.actions.length = 0;
    r.runner.send(Events.UpstreamReady);
    expect(r.actions).toEqual([
      { type: "clearDeadline", params: { phase: "login" } },
      { type: "startRelay" },
      { type: "armDeadline", params: { phase: "session" } },
    ]);
    expect(r.runner.state).toBe("ready.idle");
    expect(r.emitted.map((t) => [t.machine, t.from, t.to, t.cause])).toEqual([
      ["client", "startup.fresh", "authenticating.client", "Startup"],
      ["client", "authenticating.client", "authenticating.upstream", "ClientAuthOk"],
      ["client", "authenticating.upstream", "ready.idle", "UpstreamReady"],
    ]);
    expect(r.emitted.every((t) => t.connectionId === "c1")).toBe(true);
  });

  it("AuthResponse during client authentication is accepted and does nothing", () => {
    const r = runnerIn("authenticating.client");
    expect(r.runner.send(Events.AuthResponse)).toBe("authenticating.client");
    expect(r.log).toEqual([]);
  });

  it("relayed traffic carries no actions: a whole transaction executes nothing", () => {
    const r = runnerAlong(ready);
    for (const e of [
      Events.Query,
      ReadyForQuery.T[0],
      Events.Parse,
      Events.Bind,
      Events.Execute,
      Events.Sync,
      ReadyForQuery.T[0],
      Events.Query,
      Events.CopyInResponse,
      Events.CopyDone,
      ReadyForQuery.I[0],
    ])
      r.runner.send(e);
    expect(r.runner.state).toBe("ready.idle");
    expect(r.actions).toEqual([]);
    expect(r.emitted.length).toBeGreaterThan(4);
  });

  it("a Transition is emitted before the actions of its step run", () => {
    const r = runnerIn("authenticating.upstream");
    r.runner.send(Events.UpstreamReady);
    expect(r.log).toEqual([
      "authenticating.upstream -> ready.idle",
      { type: "clearDeadline", params: { phase: "login" } },
      { type: "startRelay" },
      { type: "armDeadline", params: { phase: "session" } },
    ]);
  });

  it("an event sent from inside an action is queued and applied after the current actions", () => {
    const r = runnerIn("authenticating.client");
    const inner: string[] = [];
    // As the runtime does: the upstream login completes while connectServer is still running.
    r.onAction((a) => {
      if (a.type === "connectServer") inner.push(r.runner.send(Events.UpstreamReady));
    });
    expect(r.runner.send(Events.ClientAuthOk)).toBe("ready.idle");
    // The inner send returns at once, in the state the current step reached.
    expect(inner).toEqual(["authenticating.upstream"]);
    expect(r.log).toEqual([
      "authenticating.client -> authenticating.upstream",
      { type: "sendAuthOk" },
      { type: "connectServer" },
      "authenticating.upstream -> ready.idle",
      { type: "clearDeadline", params: { phase: "login" } },
      { type: "startRelay" },
      { type: "armDeadline", params: { phase: "session" } },
    ]);
  });

  it("an event queued by a queued event's action runs after it, in order", () => {
    const r = runnerIn("authenticating.client");
    r.onAction((a) => {
      if (a.type === "connectServer") r.runner.send(Events.UpstreamReady);
      // Sent while UpstreamReady's own actions run: it waits for them, too.
      if (a.type === "startRelay") r.runner.send(Events.Query);
    });
    expect(r.runner.send(Events.ClientAuthOk)).toBe("busy.simpleQuery");
    expect(r.log).toEqual([
      "authenticating.client -> authenticating.upstream",
      { type: "sendAuthOk" },
      { type: "connectServer" },
      "authenticating.upstream -> ready.idle",
      { type: "clearDeadline", params: { phase: "login" } },
      { type: "startRelay" },
      { type: "armDeadline", params: { phase: "session" } },
      "ready.idle -> busy.simpleQuery",
    ]);
    // Nothing is left in the queue: the next event is applied alone.
    r.onAction(() => {});
    r.clear();
    expect(r.runner.send(ReadyForQuery.I[0])).toBe("ready.idle");
    expect(r.log).toEqual(["busy.simpleQuery -> ready.idle"]);
  });
});

describe("MachineRunner: the first packet", () => {
  it("each encryption request is refused once, in either order", () => {
    const ssl = runnerIn("startup.fresh");
    expect(ssl.runner.send(Events.SSLRequest)).toBe("startup.sslRefused");
    expect(ssl.runner.send(Events.GSSENCRequest)).toBe("startup.bothRefused");
    expect(ssl.actions).toEqual([{ type: "refuseEncryption" }, { type: "refuseEncryption" }]);
    const gss = runnerIn("startup.fresh");
    expect(gss.runner.send(Events.GSSENCRequest)).toBe("startup.gssRefused");
    expect(gss.runner.send(Events.SSLRequest)).toBe("startup.bothRefused");
    expect(gss.actions).toEqual([{ type: "refuseEncryption" }, { type: "refuseEncryption" }]);
    expect(gss.emitted.map((t) => t.to)).toEqual(["startup.gssRefused", "startup.bothRefused"]);
  });

  it.each([
    ["startup.sslRefused", "SSLRequest"],
    ["startup.gssRefused", "GSSENCRequest"],
    ["startup.bothRefused", "SSLRequest"],
    ["startup.bothRefused", "GSSENCRequest"],
  ] as const)("a repeated request in %s (%s) is a violation, and is not answered N", (key, type) => {
    const r = runnerIn(key);
    expect(r.runner.peek(Events[type]).to).toBe("violation");
    expect(r.runner.send(Events[type])).toBe("violation");
    expect(r.actions).toEqual(violationEntry);
    expect(r.actions.some((a) => a.type === "refuseEncryption")).toBe(false);
  });

  it("with TLS available an SSLRequest leads to tls, and TLS counts as both refusals used", () => {
    const r = runnerIn("startup.fresh");
    expect(r.runner.send(Events.SSLRequestTls)).toBe("tls");
    expect(r.actions).toEqual([{ type: "acceptTls" }]);
    expect(r.runner.send(Events.TlsEstablished)).toBe("startup.bothRefused");
    expect(r.runner.send(Events.SSLRequestTls)).toBe("violation");
    // From gssRefused an SSLRequest may still become TLS.
    const g = runnerIn("startup.gssRefused");
    expect(g.runner.send(Events.SSLRequestTls)).toBe("tls");
    // But not from sslRefused: that request was already refused.
    expect(runnerIn("startup.sslRefused").runner.send(Events.SSLRequestTls)).toBe("violation");
  });

  it.each(startupStates)("Startup in %s begins authentication", (key) => {
    const r = runnerIn(key);
    expect(r.runner.send(Events.Startup)).toBe("authenticating.client");
    expect(r.actions).toEqual([{ type: "authenticate" }]);
  });

  it.each(startupStates)(
    "CancelRequest in %s is forwarded; CancelDone ends the connection silently",
    (key) => {
      const r = runnerIn(key);
      expect(r.runner.send(Events.CancelRequest)).toBe("cancelling");
      expect(r.actions).toEqual([{ type: "forwardCancel" }]);
      r.clear();
      // While the cancel is under way nothing the client does matters, not even a violation.
      for (const e of [Events.Query, Events.UnknownMessage, Events.ProtocolViolation, Events.Startup])
        expect(r.runner.send(e)).toBe("cancelling");
      expect(r.log).toEqual([]);
      expect(r.runner.send(Events.CancelDone)).toBe("terminating");
      expect(r.log).toEqual(["cancelling -> terminating", ...terminatingEntry]);
    },
  );

  it.each(["ClientClosed", "Timeout", "Shutdown"] as const)(
    "%s in cancelling ends it without a word",
    (type) => {
      const r = runnerIn("cancelling");
      expect(r.runner.send(Events[type])).toBe("terminating");
      expect(r.actions).toEqual(terminatingEntry);
    },
  );

  it.each(
    startupStates.flatMap((k) =>
      (["StartupInvalid", "ClientClosed", "Timeout", "Shutdown"] as const).map((e) => [k, e] as const),
    ),
  )(
    "in %s, %s ends the connection without a word (PostgreSQL says nothing before the first packet)",
    (key, type) => {
      const r = runnerIn(key);
      expect(r.runner.send(Events[type])).toBe("terminating");
      expect(r.actions).toEqual(terminatingEntry);
    },
  );

  it("direct TLS without TLS ends silently in fresh, and is a violation after a refusal", () => {
    const r = runnerIn("startup.fresh");
    expect(r.runner.send(Events.DirectTLS)).toBe("terminating");
    expect(r.actions).toEqual(terminatingEntry);
    expect(runnerIn("startup.fresh").runner.send(Events.DirectTLSAvailable)).toBe("tls");
    expect(runnerIn("startup.sslRefused").runner.send(Events.DirectTLS)).toBe("violation");
  });

  it.each(startupStates)("a ProtocolViolation in %s sends the given error and closes both legs", (key) => {
    const r = runnerIn(key);
    expect(r.runner.send(Events.ProtocolViolation)).toBe("violation");
    expect(r.actions).toEqual(violationEntry);
  });
});

describe("MachineRunner: endings and their actions", () => {
  it.each(relaying)("ProtocolViolation in %s: violation's entry actions, in order", (key) => {
    const r = runnerIn(key);
    expect(r.runner.send(Events.ProtocolViolation)).toBe("violation");
    expect(r.log).toEqual([`${key} -> violation`, ...violationEntry]);
  });

  it.each(relaying.filter((k) => k.startsWith("busy")))(
    "ClientClosed in %s cancels the query upstream, then terminating's entry runs",
    (key) => {
      const r = runnerIn(key);
      expect(r.runner.send(Events.ClientClosed)).toBe("terminating");
      expect(r.log).toEqual([`${key} -> terminating`, { type: "cancelQuery" }, ...terminatingEntry]);
    },
  );

  it.each([
    "authenticating.client",
    "authenticating.upstream",
    "ready.idle",
    "ready.inTransaction",
    "ready.failed",
  ])("ClientClosed in %s cancels nothing: nothing runs upstream", (key) => {
    const r = runnerIn(key);
    expect(r.runner.send(Events.ClientClosed)).toBe("terminating");
    expect(r.actions).toEqual(terminatingEntry);
  });

  it.each(live)("in %s, each way out sends the error it should", (key) => {
    const cases = [
      [Events.ServerClosed, [{ type: "sendError", params: { error: "connectionLost" } }]],
      [Events.Shutdown, [{ type: "sendError", params: { error: "adminShutdown" } }]],
      // PostgreSQL's own FATAL is relayed: pgwarden adds none.
      [Events.ServerFatal, []],
      [
        Events.Timeout,
        [
          {
            type: "sendError",
            params: { error: key.startsWith("authenticating") ? "loginTimeout" : "given" },
          },
        ],
      ],
    ] as const;
    for (const [event, before] of cases) {
      const r = runnerIn(key);
      expect(r.runner.send(event), event.type).toBe("terminating");
      expect(r.actions, event.type).toEqual([...before, ...terminatingEntry]);
    }
  });

  it("a failed client login or upstream login sends the given error, then closes", () => {
    const c = runnerIn("authenticating.client");
    expect(c.runner.send(Events.ClientAuthFailed)).toBe("terminating");
    expect(c.actions).toEqual([{ type: "sendError", params: { error: "given" } }, ...terminatingEntry]);
    const u = runnerIn("authenticating.upstream");
    expect(u.runner.send(Events.UpstreamFailed)).toBe("terminating");
    expect(u.actions).toEqual([{ type: "sendError", params: { error: "given" } }, ...terminatingEntry]);
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
  ])("Terminate in %s goes to terminating; only Closed leaves it", (key) => {
    const r = runnerIn(key);
    expect(r.runner.send(Events.Terminate)).toBe("terminating");
    expect(r.emitted).toMatchObject([{ from: key, to: "terminating", cause: "Terminate" }]);
    expect(r.actions).toEqual(terminatingEntry);
    r.clear();
    // Every other event, the peers' closes included, is absorbed without doing anything.
    for (const e of allEvents) if (e !== Events.Closed) expect(r.runner.send(e)).toBe("terminating");
    expect(r.log).toEqual([]);
    expect(r.runner.send(Events.Closed)).toBe("closed");
    expect(r.actions).toEqual([]);
    expect(r.runner.done).toBe(true);
  });

  it("violation absorbs everything but Closed and does nothing more", () => {
    const r = runnerIn("violation");
    for (const e of allEvents) if (e !== Events.Closed) expect(r.runner.send(e)).toBe("violation");
    expect(r.log).toEqual([]);
    expect(r.runner.send(Events.Closed)).toBe("closed");
    expect(r.actions).toEqual([]);
  });

  it("Closed is itself a violation while the connection is live", () => {
    expect(runnerIn("ready.idle").runner.send(Events.Closed)).toBe("violation");
    expect(runnerIn("startup.fresh").runner.send(Events.Closed)).toBe("violation");
  });
});

describe("MachineRunner: relaying rules of the connection machine", () => {
  it("Query during busy.copy.in is a violation", () => {
    const r = runnerAlong(copyIn, "busy.copy.in");
    expect(r.runner.send(Events.Query)).toBe("violation");
    expect(r.emitted).toMatchObject([{ from: "busy.copy.in", to: "violation", cause: "Query" }]);
  });

  it.each(["Parse", "Bind", "Execute", "FunctionCall", "CopyInResponse"] as const)(
    "%s during busy.copy.in is a violation too",
    (type) => {
      const { runner } = runnerAlong(copyIn);
      expect(runner.send(Events[type])).toBe("violation");
    },
  );

  it.each(["Flush", "Sync"] as const)("%s during busy.copy.in is accepted without change", (type) => {
    const r = runnerAlong(copyIn);
    expect(r.runner.send(Events[type])).toBe("busy.copy.in");
    expect(r.log).toEqual([]);
  });

  it.each(["ready.idle", "ready.inTransaction", "ready.failed"])(
    "CopyDone and CopyFail in %s change nothing",
    (key) => {
      const r = runnerIn(key);
      expect(r.runner.send(Events.CopyDone)).toBe(key);
      expect(r.runner.send(Events.CopyFail)).toBe(key);
      expect(r.log).toEqual([]);
    },
  );

  it.each(Object.keys(busyPaths))("ReadyForQuery with more=true keeps %s", (key) => {
    for (const status of ["I", "T", "E"] as const) {
      const r = runnerAlong(busyPaths[key]!, key);
      expect(r.runner.send(ReadyForQuery[status][1])).toBe(key);
      expect(r.log).toEqual([]);
    }
  });

  it.each(Object.keys(busyPaths))("ReadyForQuery(T) from %s goes to ready.inTransaction", (key) => {
    const r = runnerAlong(busyPaths[key]!);
    expect(r.runner.send(ReadyForQuery.T[0])).toBe("ready.inTransaction");
    expect(r.emitted).toMatchObject([{ from: key, to: "ready.inTransaction", cause: "ReadyForQuery" }]);
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
      const { runner } = runnerAlong(copyIn);
      expect(runner.send(ReadyForQuery[status][0]), `ReadyForQuery(${status})`).toBe(key);
    }
  });
});

describe("MachineRunner: the runner itself", () => {
  it("every state reachable; every state but the endings and cancelling turns UnknownMessage into a violation", () => {
    const all = leafKeys(connectionMachine.root);
    // The machine reaches every state it declares, so the loop below skips none.
    expect([...shortestEventsTo.keys()].sort()).toEqual([...all].sort());
    const absorbing = new Set(["closed", "terminating", "violation", "cancelling"]);
    for (const key of all) {
      const r = runnerIn(key);
      const after = r.runner.send(Events.UnknownMessage);
      if (key === "tls") {
        // Mid-handshake nothing plaintext may be written: the ending is silent.
        expect(after).toBe("terminating");
        expect(r.actions.some((a) => a.type === "sendError")).toBe(false);
      } else if (absorbing.has(key)) {
        expect(after, key).toBe(key);
        expect(r.log, key).toEqual([]);
      } else {
        expect(after, key).toBe("violation");
        expect(r.emitted, key).toMatchObject([{ from: key, to: "violation", cause: "UnknownMessage" }]);
        expect(r.actions, key).toEqual(violationEntry);
      }
    }
  });

  it("closed is final: nothing moves it, nothing is emitted, nothing is executed", () => {
    const r = runnerIn("closed");
    expect(r.runner.done).toBe(true);
    for (const e of allEvents) expect(r.runner.send(e)).toBe("closed");
    expect(r.log).toEqual([]);
  });

  it("peek tells the step without taking it: no state change, no Transition, no action", () => {
    const r = runnerIn("startup.sslRefused");
    expect(r.runner.peek(Events.GSSENCRequest)).toEqual({
      to: "startup.bothRefused",
      actions: [{ type: "refuseEncryption" }],
    });
    expect(r.runner.peek(Events.SSLRequest)).toEqual({ to: "violation", actions: violationEntry });
    expect(r.runner.state).toBe("startup.sslRefused");
    expect(r.log).toEqual([]);
    // What peek answered is exactly what send then does.
    expect(r.runner.send(Events.GSSENCRequest)).toBe("startup.bothRefused");
    expect(r.actions).toEqual([{ type: "refuseEncryption" }]);
  });

  it("cached steps are shared and frozen: actions cannot be changed by one connection for all", () => {
    const a = runnerIn("authenticating.upstream").runner.peek(Events.UpstreamReady);
    const b = runnerIn("authenticating.upstream").runner.peek(Events.UpstreamReady);
    expect(a.actions).toBe(b.actions);
    expect(Object.isFrozen(a.actions)).toBe(true);
    expect(a.actions.every((x) => Object.isFrozen(x))).toBe(true);
    const clear = a.actions[0] as Extract<ClientAction, { type: "clearDeadline" }>;
    expect(Object.isFrozen(clear.params)).toBe(true);
    expect(clientGraph.step(clientGraph.initial, Events.Startup).to.key).toBe("authenticating.client");
  });

  it("in() matches a state and its ancestors only on whole path segments", () => {
    const { runner } = runnerAlong(copyIn);
    expect(runner.in("busy")).toBe(true);
    expect(runner.in("busy.copy")).toBe(true);
    expect(runner.in("busy.copy.in")).toBe(true);
    expect(runner.in("busy.cop")).toBe(false);
    expect(runner.in("ready")).toBe(false);
    expect(runnerIn("startup.sslRefused").runner.in("startup")).toBe(true);
  });

  it("runners share cached transitions but not their current state", () => {
    const a = runnerAlong([...ready, Events.Query]);
    const b = recorded("c-other");
    expect(b.runner.state).toBe("startup.fresh");
    expect(a.runner.state).toBe("busy.simpleQuery");
    b.runner.send(Events.Startup);
    expect(a.runner.state).toBe("busy.simpleQuery");
    expect(b.emitted).toMatchObject([{ connectionId: "c-other", machine: "client" }]);
  });

  it("the initial state of a runner is the machine's initial state", () => {
    expect(new MachineRunner("x").state).toBe(stateKey(initialTransition(connectionMachine)[0].value));
  });
});

describe("MachineRunner: an action that throws", () => {
  it("leaves no queued event behind to be applied after a later, unrelated one", () => {
    const r = new MachineRunner("p");
    let armed = false;
    r.start({
      exec: (a) => {
        if (armed && a.type === "stopReading") {
          armed = false;
          r.send(Events.Closed);
          throw new Error("boom");
        }
      },
    });
    for (const e of [Events.Startup, Events.ClientAuthOk, Events.UpstreamReady]) r.send(e);
    armed = true;
    expect(() => r.send(Events.Terminate)).toThrow("boom");
    expect(r.state).toBe("terminating");
    // The Closed queued by the throwing action died with it: a later event does not apply it.
    expect(r.send(Events.Query)).toBe("terminating");
  });
});
