import * as Effect from "effect/Effect";
import * as FiberSet from "effect/FiberSet";
import * as TestClock from "effect/testing/TestClock";
import { describe, expect, it } from "vitest";
import type { DeadlinePhase } from "../../src/machines/actions.ts";
import { Deadlines } from "../../src/runtime/Deadlines.ts";

/** A connection stand-in that records which of its deadlines passed. */
const owner = (id: string) => {
  const fired: DeadlinePhase[] = [];
  return { id, fired, onDeadline: (p: DeadlinePhase) => void fired.push(p) };
};

/** Runs `body` with Deadlines whose fibers sleep on a TestClock: time moves only when told to. */
const withTestClock = (body: (d: Deadlines) => Effect.Effect<void>) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const fork = yield* FiberSet.makeRuntime<never>();
        yield* body(new Deadlines((e) => fork(e)));
      }),
    ).pipe(Effect.provide(TestClock.layer())),
  );

describe("Deadlines on Effect's Clock", () => {
  it("fires a phase exactly when its time has passed, not before", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const o = owner("c1");
        d.arm(o, "login", 10_000);
        yield* TestClock.adjust("9999 millis");
        expect(o.fired).toEqual([]);
        yield* TestClock.adjust("1 millis");
        expect(o.fired).toEqual(["login"]);
        expect(d.size).toBe(0);
      }),
    ));

  it("a cleared phase never fires; re-arming replaces the deadline", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const a = owner("c1");
        const b = owner("c2");
        d.arm(a, "login", 1000);
        d.arm(b, "login", 1000);
        d.clear(a, "login");
        d.arm(b, "login", 5000);
        yield* TestClock.adjust("2000 millis");
        expect(a.fired).toEqual([]);
        expect(b.fired).toEqual([]);
        yield* TestClock.adjust("3000 millis");
        expect(b.fired).toEqual(["login"]);
      }),
    ));

  it("phases are independent and clearAll drops every one", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const o = owner("c1");
        d.arm(o, "login", 1000);
        d.arm(o, "linger", 500);
        yield* TestClock.adjust("600 millis");
        expect(o.fired).toEqual(["linger"]);
        d.arm(o, "linger", 500);
        d.clearAll(o);
        expect(d.size).toBe(0);
        yield* TestClock.adjust("10 seconds");
        expect(o.fired).toEqual(["linger"]);
      }),
    ));
});
