import * as Clock from "effect/Clock";
import * as Effect from "effect/Effect";
import * as FiberSet from "effect/FiberSet";
import * as TestClock from "effect/testing/TestClock";
import { describe, expect, it } from "vitest";
import type { DeadlinePhase } from "../../src/machines/actions.ts";
import { Deadlines } from "../../src/runtime/Deadlines.ts";
import { SessionSweep } from "../../src/runtime/SessionSweep.ts";

/** A session stand-in that counts the sweep's visits; `onVisit` lets a test act during a pass. */
const member = (id: string, onVisit?: () => void) => {
  const seen = { id, visits: 0, onDeadline: (_: DeadlinePhase) => {} };
  seen.onDeadline = () => {
    seen.visits++;
    onVisit?.();
  };
  return seen;
};

/** Runs `body` with fibers that sleep on a TestClock and counts what is still running at the end. */
const withTestClock = (
  body: (fork: <A>(e: Effect.Effect<A>) => import("effect/Fiber").Fiber<A>) => Effect.Effect<void>,
) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const fork = yield* FiberSet.makeRuntime<never>();
        yield* body((e) => fork(e));
      }),
    ).pipe(Effect.provide(TestClock.layer())),
  );

describe("SessionSweep on Effect's Clock", () => {
  it("visits every member once per period, and nobody while empty", () =>
    withTestClock((fork) =>
      Effect.gen(function* () {
        const sweep = new SessionSweep(fork);
        const a = member("a");
        const b = member("b");
        sweep.add(a, 100);
        sweep.add(b, 100);
        yield* TestClock.adjust("99 millis");
        expect([a.visits, b.visits]).toEqual([0, 0]);
        yield* TestClock.adjust("1 millis");
        expect([a.visits, b.visits]).toEqual([1, 1]);
        yield* TestClock.adjust("300 millis");
        expect([a.visits, b.visits]).toEqual([4, 4]);
        sweep.delete(a);
        sweep.delete(b);
        expect(sweep.size).toBe(0);
        expect(sweep.period).toBe(Number.POSITIVE_INFINITY);
        yield* TestClock.adjust("1 second");
        expect([a.visits, b.visits]).toEqual([4, 4]);
      }),
    ));

  it("a shorter period applies to every member at once; adding again keeps one entry", () =>
    withTestClock((fork) =>
      Effect.gen(function* () {
        const sweep = new SessionSweep(fork);
        const slow = member("slow");
        sweep.add(slow, 1000);
        yield* TestClock.adjust("500 millis");
        const fast = member("fast");
        sweep.add(fast, 100);
        sweep.add(fast, 100);
        expect(sweep.size).toBe(2);
        yield* TestClock.adjust("100 millis");
        expect([slow.visits, fast.visits]).toEqual([1, 1]);
        // A longer period asked later does not slow the sweep down.
        sweep.add(member("later"), 5000);
        yield* TestClock.adjust("100 millis");
        expect(slow.visits).toBe(2);
      }),
    ));

  it("members may leave during a pass; one that throws leaves and the others are still visited", () =>
    withTestClock((fork) =>
      Effect.gen(function* () {
        const sweep = new SessionSweep(fork);
        const quitter = member("quitter", () => sweep.delete(quitter));
        const broken = member("broken", () => {
          throw new Error("bug in one session");
        });
        const steady = member("steady");
        sweep.add(quitter, 50);
        sweep.add(broken, 50);
        sweep.add(steady, 50);
        yield* TestClock.adjust("50 millis");
        expect([quitter.visits, broken.visits, steady.visits]).toEqual([1, 1, 1]);
        expect(sweep.has(quitter)).toBe(false);
        expect(sweep.has(broken)).toBe(false);
        yield* TestClock.adjust("100 millis");
        expect([quitter.visits, broken.visits, steady.visits]).toEqual([1, 1, 3]);
      }),
    ));
});

describe("Deadlines with the shared sweep", () => {
  it("watch adds no fiber per session; clear('session') and clearAll take the session out", () =>
    withTestClock((fork) =>
      Effect.gen(function* () {
        const d = new Deadlines(fork, yield* Clock.Clock);
        const sessions = Array.from({ length: 1000 }, (_, i) => member(`c${i}`));
        for (const s of sessions) d.watch(s, 200);
        expect(d.size).toBe(0);
        expect(d.watched).toBe(1000);
        yield* TestClock.adjust("200 millis");
        expect(sessions.every((s) => s.visits === 1)).toBe(true);
        d.clear(sessions[0]!, "session");
        d.clearAll(sessions[1]!);
        d.unwatch(sessions[2]!);
        expect(d.watched).toBe(997);
        yield* TestClock.adjust("200 millis");
        expect(sessions.slice(0, 3).map((s) => s.visits)).toEqual([1, 1, 1]);
        expect(sessions[3]!.visits).toBe(2);
        for (const s of sessions) d.clearAll(s);
        expect(d.watched).toBe(0);
      }),
    ));
});
