import { fc, test as fcTest } from "@fast-check/vitest";
import { Duration, Effect, Fiber, Schedule, type Scope } from "effect";
import { TestClock } from "effect/testing";
import { describe, expect, it } from "vitest";
import { type AuditLine, type AuditSink, SinkError } from "../../src/adapters/audit/AuditSink.ts";
import {
  backoffSchedule,
  makeSinkQueue,
  type SinkQueueEvent,
  type SinkQueueSettings,
} from "../../src/adapters/audit/SinkQueue.ts";

const line = (seq: number): AuditLine => ({ seq, id: `r${seq}`, text: `{"seq":${seq}}` });
const lines = (from: number, n: number) => Array.from({ length: n }, (_, i) => line(from + i));

/** A sink whose availability the test flips; it records every batch it acknowledged. */
const fakeSink = () => {
  const acked: AuditLine[][] = [];
  const attempts: number[] = [];
  const state = { down: false, closed: false, failNext: [] as boolean[] };
  const sink: AuditSink = {
    name: "fake",
    deliver: async (batch) => {
      attempts.push(batch.length);
      const fail = state.failNext.length > 0 ? state.failNext.shift() : state.down;
      if (fail)
        throw new SinkError({ code: "PGW_AUDIT_SINK_CONNECT", sink: "fake", message: "collector down" });
      acked.push([...batch]);
    },
    close: async () => {
      state.closed = true;
    },
  };
  return { sink, acked, attempts, state };
};

/** Lets promise callbacks (the sink's) and the fibers they wake run, without moving the test clock. */
const settle = Effect.gen(function* () {
  for (let i = 0; i < 5; i++) {
    yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r)));
    yield* Effect.yieldNow;
  }
});

const run = <A>(body: Effect.Effect<A, never, Scope.Scope>) =>
  Effect.runPromise(Effect.scoped(body).pipe(Effect.provide(TestClock.layer())));

const settings: SinkQueueSettings = {
  maxQueued: 100,
  batchMax: 3,
  batchMs: 1000,
  backoffMinMs: 100,
  backoffMaxMs: 1000,
  attemptTimeoutMs: 5000,
};

describe("SinkQueue", () => {
  it("sends full batches at once and a partial batch only after batchMs", async () => {
    const f = fakeSink();
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(f.sink, settings);
        for (const l of lines(1, 7)) expect(q.offer(l)).toBe(true);
        yield* settle;
        expect(f.acked.map((b) => b.map((l) => l.seq))).toEqual([
          [1, 2, 3],
          [4, 5, 6],
        ]);
        expect(q.counters()).toEqual({ sent: 6, failed: 0, retried: 0, queued: 1 });
        yield* TestClock.adjust("999 millis");
        yield* settle;
        expect(f.acked).toHaveLength(2);
        yield* TestClock.adjust("1 millis");
        yield* settle;
        expect(f.acked.map((b) => b.map((l) => l.seq))).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
        expect(q.status().lastAckedSeq).toBe(7);
      }),
    );
  });

  it("refuses lines beyond maxQueued without waiting, counting the batch in flight", async () => {
    const f = fakeSink();
    f.state.down = true;
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(f.sink, { ...settings, maxQueued: 5 });
        const taken = lines(1, 6).map((l) => q.offer(l));
        expect(taken).toEqual([true, true, true, true, true, false]);
        yield* settle;
        expect(q.status()).toMatchObject({ queued: 5, rejected: 1, healthy: false });
      }),
    );
  });

  it("reports down once, retries with growing delays, catches up in order and reports up", async () => {
    const f = fakeSink();
    const events: SinkQueueEvent[] = [];
    f.state.down = true;
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(f.sink, settings, { onEvent: (e) => events.push(e) });
        for (const l of lines(1, 3)) q.offer(l);
        yield* settle;
        expect(q.healthy).toBe(false);
        expect(events.map((e) => e._tag)).toEqual(["SinkDown"]);
        expect(q.counters()).toMatchObject({ failed: 1, retried: 0, queued: 3 });
        expect(q.counters().lastError).toBe("PGW_AUDIT_SINK_CONNECT: collector down");
        // Delays 100, 200, 400, 800, then 1000 (each ±20%, capped): 10 s holds about a dozen attempts.
        for (let i = 0; i < 100; i++) {
          yield* TestClock.adjust("100 millis");
          yield* settle;
        }
        const attempts = f.attempts.length;
        expect(attempts).toBeGreaterThanOrEqual(10);
        expect(attempts).toBeLessThanOrEqual(16);
        expect(events.map((e) => e._tag)).toEqual(["SinkDown"]);
        for (const l of lines(4, 4)) q.offer(l);
        f.state.down = false;
        yield* TestClock.adjust("1 second");
        yield* settle;
        yield* TestClock.adjust("1 second");
        yield* settle;
        expect(f.acked.flat().map((l) => l.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
        expect(q.healthy).toBe(true);
        expect(events.map((e) => e._tag)).toEqual(["SinkDown", "SinkUp"]);
        const up = events[1];
        expect(up?._tag === "SinkUp" && up.downForMs).toBeGreaterThanOrEqual(10_000);
        expect(q.counters()).toMatchObject({ sent: 7, queued: 0, failed: attempts, retried: attempts });
      }),
    );
  });

  it("fails an attempt the sink never answers after attemptTimeoutMs, then retries", async () => {
    const acked: number[] = [];
    let calls = 0;
    const sink: AuditSink = {
      name: "hung",
      deliver: (batch) => {
        if (calls++ === 0) return new Promise<void>(() => {});
        acked.push(...batch.map((l) => l.seq));
        return Promise.resolve();
      },
      close: async () => {},
    };
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(sink, settings);
        for (const l of lines(1, 3)) q.offer(l);
        yield* settle;
        yield* TestClock.adjust("4999 millis");
        yield* settle;
        expect(q.counters()).toMatchObject({ failed: 0, queued: 3 });
        yield* TestClock.adjust("1 millis");
        yield* settle;
        expect(q.counters().lastError).toBe(
          "PGW_AUDIT_SINK_TIMEOUT: delivery not acknowledged within 5000 ms",
        );
        yield* TestClock.adjust("1 second");
        yield* settle;
        expect(acked).toEqual([1, 2, 3]);
        expect(q.counters()).toMatchObject({ sent: 3, failed: 1, retried: 1, queued: 0 });
      }),
    );
  });

  it("drains on shutdown, then refuses lines and closes the sink", async () => {
    const f = fakeSink();
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(f.sink, settings);
        for (const l of lines(1, 4)) q.offer(l);
        const drained = yield* q.shutdown(5000);
        expect(drained).toBe(true);
        expect(f.acked.flat().map((l) => l.seq)).toEqual([1, 2, 3, 4]);
        expect(f.state.closed).toBe(true);
        expect(q.offer(line(5))).toBe(false);
      }),
    );
  });

  it("gives up waiting at the shutdown deadline when the sink stays down", async () => {
    const f = fakeSink();
    f.state.down = true;
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(f.sink, settings);
        q.offer(line(1));
        yield* settle;
        const fiber = yield* Effect.forkChild(q.shutdown(3000));
        for (let i = 0; i < 4; i++) {
          yield* TestClock.adjust("1 second");
          yield* settle;
        }
        expect(yield* Fiber.join(fiber)).toBe(false);
        expect(q.counters().queued).toBe(1);
        expect(f.state.closed).toBe(true);
      }),
    );
  });

  fcTest.prop(
    [
      fc.array(fc.boolean(), { maxLength: 30 }),
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 8 }),
    ],
    { numRuns: 25 },
  )("whatever fails, every line is acknowledged once, in order", async (failures, n, batchMax) => {
    const f = fakeSink();
    f.state.failNext = [...failures];
    await run(
      Effect.gen(function* () {
        const q = yield* makeSinkQueue(f.sink, { ...settings, batchMax, maxQueued: 1000 });
        for (const l of lines(1, n)) expect(q.offer(l)).toBe(true);
        for (let i = 0; i < 40 && q.counters().queued > 0; i++) {
          yield* TestClock.adjust("1 second");
          yield* settle;
        }
        expect(f.acked.flat().map((l) => l.seq)).toEqual(lines(1, n).map((l) => l.seq));
        expect(f.acked.every((b) => b.length <= batchMax)).toBe(true);
        expect(q.counters()).toMatchObject({
          sent: n,
          queued: 0,
          failed: f.attempts.length - f.acked.length,
        });
      }),
    );
  });
});

describe("backoffSchedule", () => {
  fcTest.prop([fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 0, max: 60_000 })])(
    "stays within [0.8 × min(min·2ⁿ, max), max]",
    async (minMs, extra) => {
      const maxMs = minMs + extra;
      const delays = await Effect.runPromise(
        Effect.gen(function* () {
          const step = yield* Schedule.toStep(backoffSchedule(minMs, maxMs));
          const out: number[] = [];
          for (let i = 0; i < 25; i++) {
            const [, delay] = yield* step(i, undefined);
            out.push(Duration.toMillis(delay));
          }
          return out;
        }),
      );
      delays.forEach((d, n) => {
        expect(d).toBeLessThanOrEqual(maxMs);
        expect(d).toBeGreaterThanOrEqual(0.8 * Math.min(minMs * 2 ** n, maxMs) - 1e-9);
      });
    },
  );
});
