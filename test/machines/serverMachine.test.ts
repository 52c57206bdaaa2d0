import { describe, expect, it } from "vitest";
import type { ServerAction } from "../../src/machines/actions.ts";
import { ReadyForQuery } from "../../src/machines/events.ts";
import { serverRunner } from "../../src/machines/MachineRunner.ts";
import { allServerEvents, type ServerEvent, ServerEvents } from "../../src/machines/serverEvents.ts";
import { serverMachine } from "../../src/machines/serverMachine.ts";
import {
  describeAgreement,
  leafKeys,
  type MachineSpec,
  recorder,
  shortestEvents,
} from "./support/agreement.ts";

const server: MachineSpec<ServerEvent, ServerAction> = {
  name: "server",
  machine: serverMachine,
  events: allServerEvents,
  runner: serverRunner,
  violation: "closing",
  ends: new Set(["closing", "closed"]),
};

describeAgreement(server);

const shortestEventsTo = shortestEvents(serverMachine, allServerEvents);

const runnerIn = (key: string) => {
  const events = shortestEventsTo.get(key);
  if (events === undefined) throw new Error(`no path to ${key}`);
  const r = recorder(server, "s-test");
  for (const e of events) r.runner.send(e);
  expect(r.runner.state, `setting up ${key}`).toBe(key);
  r.clear();
  return r;
};

const { Connected, LoggedIn, LoginFailed, Request, Reset, Close, ProtocolViolation, Lost } = ServerEvents;
const offerRelease: ServerAction = { type: "offerRelease" };
const sendTerminate: ServerAction = { type: "sendTerminate" };
const live = ["authenticating", "idle", "active", "inTransaction", "resetting"];

describe("server machine: the login", () => {
  it("starts connecting with no entry actions, and logs in to idle, offering itself for release", () => {
    const r = recorder(server, "s1");
    expect(r.runner.state).toBe("connecting");
    expect(r.actions).toEqual([]);
    expect(r.runner.send(Connected)).toBe("authenticating");
    expect(r.actions).toEqual([]);
    expect(r.runner.send(LoggedIn)).toBe("idle");
    expect(r.log).toEqual(["connecting -> authenticating", "authenticating -> idle", offerRelease]);
    expect(r.emitted.map((t) => [t.connectionId, t.machine, t.cause])).toEqual([
      ["s1", "server", "Connected"],
      ["s1", "server", "LoggedIn"],
    ]);
  });

  it("a failed or abandoned connect closes without a Terminate: there is no socket to send it on", () => {
    for (const e of [LoginFailed, Lost, Close]) {
      const r = recorder(server);
      expect(r.runner.send(e), e.type).toBe("closed");
      expect(r.actions, e.type).toEqual([]);
      expect(r.runner.done).toBe(true);
    }
  });

  it("a login refused or abandoned after connecting sends Terminate on the way out", () => {
    for (const e of [LoginFailed, Close]) {
      const r = runnerIn("authenticating");
      expect(r.runner.send(e), e.type).toBe("closing");
      expect(r.actions, e.type).toEqual([sendTerminate]);
    }
  });
});

describe("server machine: idle only at ReadyForQuery I with nothing owed", () => {
  it("ReadyForQuery(I) with nothing more owed returns active to idle and offers release", () => {
    const r = runnerIn("active");
    expect(r.runner.send(ReadyForQuery.I[0])).toBe("idle");
    expect(r.log).toEqual(["active -> idle", offerRelease]);
  });

  it.each(["I", "T", "E"] as const)(
    "ReadyForQuery(%s) with more owed keeps active, offering nothing",
    (s) => {
      const r = runnerIn("active");
      expect(r.runner.send(ReadyForQuery[s][1])).toBe("active");
      expect(r.log).toEqual([]);
    },
  );

  it.each(["T", "E"] as const)(
    "ReadyForQuery(%s) with nothing owed is inTransaction: bound to its client",
    (s) => {
      const r = runnerIn("active");
      expect(r.runner.send(ReadyForQuery[s][0])).toBe("inTransaction");
      expect(r.actions).toEqual([]);
      // The transaction's next request makes it active again; only its end makes it idle.
      expect(r.runner.send(Request)).toBe("active");
      expect(r.runner.send(ReadyForQuery.I[0])).toBe("idle");
      expect(r.actions).toEqual([offerRelease]);
    },
  );

  it("requests pile up in active without any action", () => {
    const r = runnerIn("idle");
    expect(r.runner.send(Request)).toBe("active");
    for (let i = 0; i < 3; i++) expect(r.runner.send(Request)).toBe("active");
    expect(r.actions).toEqual([]);
    expect(r.emitted).toHaveLength(1);
  });

  it("the reset query runs in resetting and ends in idle, offering release again", () => {
    const r = runnerIn("idle");
    expect(r.runner.send(Reset)).toBe("resetting");
    expect(r.actions).toEqual([]);
    expect(r.runner.send(ReadyForQuery.I[1])).toBe("resetting");
    expect(r.runner.send(ReadyForQuery.I[0])).toBe("idle");
    expect(r.actions).toEqual([offerRelease]);
  });

  it.each(["idle", "inTransaction"])(
    "a ReadyForQuery nobody asked for in %s is a violation: closing",
    (key) => {
      const r = runnerIn(key);
      expect(r.runner.send(ReadyForQuery.I[0])).toBe("closing");
      expect(r.actions).toEqual([sendTerminate]);
    },
  );

  it("no state but idle executes offerRelease, whatever arrives", () => {
    for (const key of leafKeys(serverMachine.root)) {
      for (const e of allServerEvents) {
        const r = runnerIn(key);
        const to = r.runner.send(e);
        const offered = r.actions.some((a) => a.type === "offerRelease");
        expect(offered, `${key} --${e.type}--> ${to}`).toBe(to === "idle" && key !== "idle");
      }
    }
  });
});

describe("server machine: endings", () => {
  it.each(live)("Close in %s goes to closing and sends Terminate", (key) => {
    const r = runnerIn(key);
    expect(r.runner.send(Close)).toBe("closing");
    expect(r.log).toEqual([`${key} -> closing`, sendTerminate]);
  });

  it.each(["idle", "active", "inTransaction", "resetting"])(
    "ProtocolViolation and unexpected events in %s close it with a Terminate",
    (key) => {
      for (const e of [ProtocolViolation, Connected, LoggedIn]) {
        const r = runnerIn(key);
        expect(r.runner.send(e), e.type).toBe("closing");
        expect(r.actions, e.type).toEqual([sendTerminate]);
      }
    },
  );

  it.each(["connecting", "closing", ...live])(
    "Lost from %s goes straight to closed, doing nothing",
    (key) => {
      const r = runnerIn(key);
      expect(r.runner.send(Lost)).toBe("closed");
      expect(r.actions).toEqual([]);
      expect(r.runner.done).toBe(true);
    },
  );

  it("closing waits for the socket: everything but Lost is absorbed, Terminate is sent once", () => {
    const r = runnerIn("active");
    r.runner.send(Close);
    r.clear();
    for (const e of allServerEvents) if (e !== Lost) expect(r.runner.send(e)).toBe("closing");
    expect(r.log).toEqual([]);
    expect(r.runner.send(Lost)).toBe("closed");
  });

  it("closed is final: nothing moves it and nothing is executed", () => {
    const r = runnerIn("closed");
    for (const e of allServerEvents) expect(r.runner.send(e)).toBe("closed");
    expect(r.log).toEqual([]);
  });

  it("every declared state is reachable", () => {
    expect([...shortestEventsTo.keys()].sort()).toEqual(leafKeys(serverMachine.root).sort());
  });
});
