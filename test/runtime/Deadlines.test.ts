import { fc, test } from "@fast-check/vitest";
import * as Clock from "effect/Clock";
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
        yield* body(new Deadlines((e) => fork(e), yield* Clock.Clock));
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

  it("many owners armed out of order fire in due order, each once, and cleared ones never", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const order: string[] = [];
        const owners = Array.from({ length: 200 }, (_, i) => ({
          id: `c${i}`,
          onDeadline: () => void order.push(`c${i}`),
        }));
        // Due times 1..200 s, armed in a scrambled order.
        const due = (i: number) => ((i * 37) % 200) + 1;
        for (const [i, o] of owners.entries()) d.arm(o, "login", due(i) * 1000);
        for (const [i, o] of owners.entries()) if (i % 3 === 0) d.clear(o, "login");
        expect(d.size).toBe(200 - 67);
        yield* TestClock.adjust("200 seconds");
        const expected = owners
          .map((o, i) => ({ id: o.id, at: due(i), cleared: i % 3 === 0 }))
          .filter((x) => !x.cleared)
          .sort((a, b) => a.at - b.at)
          .map((x) => x.id);
        expect(order).toEqual(expected);
        expect(d.size).toBe(0);
      }),
    ));

  it("a deadline armed earlier than the one slept for still fires on time", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const late = owner("late");
        const early = owner("early");
        d.arm(late, "login", 10_000);
        yield* TestClock.adjust("1000 millis");
        d.arm(early, "linger", 500);
        yield* TestClock.adjust("500 millis");
        expect(early.fired).toEqual(["linger"]);
        expect(late.fired).toEqual([]);
        yield* TestClock.adjust("8500 millis");
        expect(late.fired).toEqual(["login"]);
      }),
    ));

  it("clearing the head it sleeps for leaves the next deadline on time", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const a = owner("a");
        const b = owner("b");
        d.arm(a, "login", 1000);
        d.arm(b, "login", 3000);
        d.clear(a, "login");
        yield* TestClock.adjust("2999 millis");
        expect(b.fired).toEqual([]);
        yield* TestClock.adjust("1 millis");
        expect(b.fired).toEqual(["login"]);
      }),
    ));

  it("an owner may arm again from onDeadline, and one that throws stops nobody else's", () =>
    withTestClock((d) =>
      Effect.gen(function* () {
        const fired: string[] = [];
        const again = {
          id: "again",
          onDeadline: (p: DeadlinePhase) => {
            fired.push(`again:${p}`);
            if (p === "login") d.arm(again, "linger", 100);
          },
        };
        const broken = {
          id: "broken",
          onDeadline: () => {
            throw new Error("broken owner");
          },
        };
        const other = owner("other");
        d.arm(broken, "login", 1000);
        d.arm(again, "login", 1000);
        d.arm(other, "login", 1000);
        yield* TestClock.adjust("1000 millis");
        expect(other.fired).toEqual(["login"]);
        expect(fired).toEqual(["again:login"]);
        yield* TestClock.adjust("100 millis");
        expect(fired).toEqual(["again:login", "again:linger"]);
        expect(d.size).toBe(0);
      }),
    ));

  it("a thousand logins armed and cleared take one timer fiber, not one each", () =>
    Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const fork = yield* FiberSet.makeRuntime<never>();
          let forks = 0;
          const d = new Deadlines(
            (e) => {
              forks++;
              return fork(e);
            },
            yield* Clock.Clock,
          );
          const owners = Array.from({ length: 1000 }, (_, i) => owner(`c${i}`));
          for (const o of owners) {
            d.arm(o, "login", 10_000);
            yield* TestClock.adjust("1 millis");
          }
          for (const o of owners) d.clear(o, "login");
          expect(forks).toBe(1);
          expect(d.size).toBe(0);
          yield* TestClock.adjust("20 seconds");
          expect(owners.every((o) => o.fired.length === 0)).toBe(true);
        }),
      ).pipe(Effect.provide(TestClock.layer())),
    ));

  const op = fc.oneof(
    // From 1 ms: a deadline due now fires on the scheduler's next turn, which TestClock does not pin down.
    fc.record({ kind: fc.constant("arm" as const), who: fc.nat(9), ms: fc.integer({ min: 1, max: 5000 }) }),
    fc.record({ kind: fc.constant("clear" as const), who: fc.nat(9) }),
    fc.record({ kind: fc.constant("wait" as const), ms: fc.nat(2000) }),
  );

  test.prop([fc.array(op, { maxLength: 60 })], { numRuns: 100 })(
    "any sequence of arms, clears and waits fires exactly the deadlines still armed, each when due",
    (ops) =>
      withTestClock((d) =>
        Effect.gen(function* () {
          let now = 0;
          const fired: { who: number; at: number }[] = [];
          const owners = Array.from({ length: 10 }, (_, who) => ({
            id: `c${who}`,
            onDeadline: () => void fired.push({ who, at: now }),
          }));
          const expected = new Map<number, number>();
          const check = () => {
            for (const f of fired.splice(0)) {
              expect(expected.get(f.who)).toBe(f.at);
              expected.delete(f.who);
            }
            for (const at of expected.values()) expect(at).toBeGreaterThan(now);
          };
          const moveTo = function* (t: number) {
            if (t <= now) return;
            const by = t - now;
            // Set first: what fires while the clock moves to `t` is seen as firing at `t`.
            now = t;
            yield* TestClock.adjust(`${by} millis`);
            check();
          };
          // The clock stops a millisecond before and at each due time the model expects, so an
          // early or late firing is seen as such.
          const advance = function* (ms: number) {
            const end = now + ms;
            for (;;) {
              const next = Math.min(...expected.values());
              if (next > end) break;
              yield* moveTo(next - 1);
              yield* moveTo(next);
            }
            yield* moveTo(end);
          };
          for (const o of ops) {
            if (o.kind === "arm") {
              d.arm(owners[o.who]!, "login", o.ms);
              expected.set(o.who, now + o.ms);
            } else if (o.kind === "clear") {
              d.clear(owners[o.who]!, "login");
              expected.delete(o.who);
            } else yield* advance(Math.min(o.ms, 200));
          }
          expect(d.size).toBe(expected.size);
          yield* advance(5001);
          expect(expected.size).toBe(0);
          expect(d.size).toBe(0);
        }),
      ),
  );
});
