import { fc, test } from "@fast-check/vitest";
import { Schema } from "effect";
import { describe, expect, it } from "vitest";
import {
  type ActivitySample,
  createSessionCounter,
  isSessionRefusal,
  MAX_SWEEP_MS,
  MAX_TIMER_MS,
  nextDeadline,
  SessionControlsConfig,
  type SessionLease,
  type SessionLimits,
  sessionEndError,
  sessionLimitError,
  sweepPeriodMs,
  timerAction,
  visitSession,
} from "../../src/policy/sessionLimits.ts";

const lease = (r: ReturnType<ReturnType<typeof createSessionCounter>["tryAcquire"]>): SessionLease => {
  if (isSessionRefusal(r)) throw new Error(`refused: ${r.refused}`);
  return r;
};

describe("SessionControlsConfig", () => {
  it("defaults to no count limits, a 15-minute idle timeout and no lifetime limit", () => {
    expect(Schema.decodeUnknownSync(SessionControlsConfig)({})).toEqual({
      perIdentity: {},
      idleTimeoutMs: 900_000,
      maxLifetimeMs: 0,
    });
  });

  it("refuses zero, negative and fractional limits at the key that has them", () => {
    const r = Schema.decodeUnknownExit(SessionControlsConfig)(
      { maxPerIdentity: 0, maxPerSource: 1.5, perIdentity: { batch: -1 }, idleTimeoutMs: -5 },
      { errors: "all" },
    );
    expect(r._tag).toBe("Failure");
    const text = String(r._tag === "Failure" ? r.cause : "");
    for (const at of [
      '["maxPerIdentity"]',
      '["maxPerSource"]',
      '["perIdentity"]["batch"]',
      '["idleTimeoutMs"]',
    ])
      expect(text).toContain(`at ${at}`);
  });
});

describe("session counter", () => {
  const limits: SessionLimits = { maxPerIdentity: 2, maxPerSource: 3, perIdentity: { batch: 4 } };

  it("refuses the identity over its limit, then the source over its limit, naming which and the limit", () => {
    const c = createSessionCounter(limits);
    lease(c.tryAcquire("alice", "10.0.0.1"));
    lease(c.tryAcquire("alice", "10.0.0.1"));
    expect(c.tryAcquire("alice", "10.0.0.2")).toEqual({ refused: "identity", limit: 2 });
    lease(c.tryAcquire("bob", "10.0.0.1"));
    expect(c.tryAcquire("carol", "10.0.0.1")).toEqual({ refused: "source", limit: 3 });
    // A refusal takes nothing.
    expect(c.activeFor("carol")).toBe(0);
    expect(c.activeFrom("10.0.0.1")).toBe(3);
  });

  it("applies a per-identity override in place of the default", () => {
    const c = createSessionCounter({ ...limits, maxPerSource: undefined });
    for (let i = 0; i < 4; i++) lease(c.tryAcquire("batch", `10.0.0.${i}`));
    expect(c.tryAcquire("batch", "10.0.0.9")).toEqual({ refused: "identity", limit: 4 });
  });

  it("counts an IPv4 peer the same whether reported plain or IPv4-mapped, and unknown peers together", () => {
    const c = createSessionCounter({ maxPerSource: 1, perIdentity: {} });
    const l = lease(c.tryAcquire("a", "::ffff:10.0.0.1"));
    expect(l.source).toBe("10.0.0.1");
    expect(c.tryAcquire("b", "10.0.0.1")).toEqual({ refused: "source", limit: 1 });
    lease(c.tryAcquire("a", undefined));
    expect(c.tryAcquire("b", "not-an-ip")).toEqual({ refused: "source", limit: 1 });
  });

  it("has no limits when none are configured", () => {
    const c = createSessionCounter({ perIdentity: {} });
    for (let i = 0; i < 1000; i++) lease(c.tryAcquire("a", "127.0.0.1"));
    expect(c.activeFor("a")).toBe(1000);
  });

  it("releases once however often release is called", () => {
    const c = createSessionCounter(limits);
    const a = lease(c.tryAcquire("alice", "10.0.0.1"));
    lease(c.tryAcquire("alice", "10.0.0.1"));
    a.release();
    a.release();
    a.release();
    expect(c.activeFor("alice")).toBe(1);
    lease(c.tryAcquire("alice", "10.0.0.1"));
    expect(c.tryAcquire("alice", "10.0.0.1")).toMatchObject({ refused: "identity" });
  });

  it("applies lowered limits to new sessions only", () => {
    const c = createSessionCounter(limits);
    const held = [lease(c.tryAcquire("alice", "10.0.0.1")), lease(c.tryAcquire("alice", "10.0.0.1"))];
    c.reconfigure({ maxPerIdentity: 1, perIdentity: {} });
    expect(c.activeFor("alice")).toBe(2);
    expect(c.tryAcquire("alice", "10.0.0.1")).toEqual({ refused: "identity", limit: 1 });
    held[0]!.release();
    expect(c.tryAcquire("alice", "10.0.0.1")).toEqual({ refused: "identity", limit: 1 });
    held[1]!.release();
    lease(c.tryAcquire("alice", "10.0.0.1"));
  });

  type Op = { kind: "acquire"; identity: string; source: string } | { kind: "release"; which: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant("acquire" as const),
      identity: fc.constantFrom("alice", "bob", "batch"),
      source: fc.constantFrom("10.0.0.1", "::ffff:10.0.0.1", "10.0.0.2", "2001:db8::1"),
    }),
    fc.record({ kind: fc.constant("release" as const), which: fc.nat() }),
  );

  test.prop([
    fc.array(op, { maxLength: 200 }),
    fc.record({
      maxPerIdentity: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
      maxPerSource: fc.option(fc.integer({ min: 1, max: 5 }), { nil: undefined }),
      perIdentity: fc.constantFrom<Record<string, number>>({}, { batch: 6 }),
    }),
  ])("matches a model of live leases, never exceeds a limit and leaks nothing", (ops, lim) => {
    const c = createSessionCounter(lim);
    const live: { lease: SessionLease; released: boolean }[] = [];
    const modelCount = (pred: (l: SessionLease) => boolean) =>
      live.filter((l) => !l.released && pred(l.lease)).length;
    for (const o of ops) {
      if (o.kind === "release") {
        if (live.length === 0) continue;
        // Releasing an already released lease is part of the sequence on purpose.
        const l = live[o.which % live.length]!;
        l.lease.release();
        l.released = true;
        continue;
      }
      const key = o.source.replace(/^::ffff:/, "");
      const idLimit = Object.hasOwn(lim.perIdentity, o.identity)
        ? lim.perIdentity[o.identity]
        : lim.maxPerIdentity;
      const idCount = modelCount((l) => l.identity === o.identity);
      const srcCount = modelCount((l) => l.source === key);
      const r = c.tryAcquire(o.identity, o.source);
      if (idLimit !== undefined && idCount >= idLimit)
        expect(r).toEqual({ refused: "identity", limit: idLimit });
      else if (lim.maxPerSource !== undefined && srcCount >= lim.maxPerSource)
        expect(r).toEqual({ refused: "source", limit: lim.maxPerSource });
      else live.push({ lease: lease(r), released: false });
      for (const id of ["alice", "bob", "batch"])
        expect(c.activeFor(id)).toBe(modelCount((l) => l.identity === id));
    }
    for (const l of live) l.lease.release();
    expect(c.tracked()).toEqual({ identities: 0, sources: 0 });
  });

  it("words refusals as PostgreSQL does, with SQLSTATE 53300", () => {
    expect(sessionLimitError({ refused: "identity", limit: 2 }, "alice", "10.0.0.1")).toMatchObject({
      code: "PGW_SESSION_LIMIT",
      sqlstate: "53300",
      message: 'too many connections for role "alice" (limit 2)',
    });
    expect(sessionLimitError({ refused: "source", limit: 3 }, "alice", "::ffff:10.0.0.1").message).toBe(
      "too many connections from host 10.0.0.1 (limit 3)",
    );
  });
});

describe("deadlines", () => {
  const timers = { idleTimeoutMs: 900_000, maxLifetimeMs: 8 * 3_600_000 };
  const t0 = 1_700_000_000_000;

  it("picks the earlier of idle and lifetime, lifetime on a tie, and none when both are off", () => {
    expect(nextDeadline(timers, { startedAt: t0, lastActivityAt: t0 + 5, busy: false })).toEqual({
      kind: "idle",
      at: t0 + 5 + 900_000,
    });
    const late = t0 + timers.maxLifetimeMs - 100_000;
    expect(nextDeadline(timers, { startedAt: t0, lastActivityAt: late, busy: false })).toEqual({
      kind: "lifetime",
      at: t0 + timers.maxLifetimeMs,
    });
    const tie = t0 + timers.maxLifetimeMs - timers.idleTimeoutMs;
    expect(nextDeadline(timers, { startedAt: t0, lastActivityAt: tie, busy: false })?.kind).toBe("lifetime");
    expect(
      nextDeadline(
        { idleTimeoutMs: 0, maxLifetimeMs: 0 },
        { startedAt: t0, lastActivityAt: t0, busy: false },
      ),
    ).toBeUndefined();
  });

  it("does not count a request in flight as idle", () => {
    expect(
      nextDeadline(
        { idleTimeoutMs: 1000, maxLifetimeMs: 0 },
        { startedAt: t0, lastActivityAt: t0, busy: true },
      ),
    ).toBeUndefined();
    expect(timerAction(timers, { startedAt: t0, lastActivityAt: t0, busy: true }, t0 + 10_000_000)).toEqual({
      kind: "arm",
      delayMs: timers.maxLifetimeMs - 10_000_000,
      deadline: { kind: "lifetime", at: t0 + timers.maxLifetimeMs },
    });
  });

  it("never arms a timer longer than setTimeout can hold", () => {
    const month = { idleTimeoutMs: 0, maxLifetimeMs: 30 * 86_400_000 };
    const a = timerAction(month, { startedAt: t0, lastActivityAt: t0, busy: false }, t0);
    expect(a).toMatchObject({ kind: "arm", delayMs: MAX_TIMER_MS });
  });

  /**
   * A simulated runtime: one timer re-armed as timerAction says, activity only moving
   * lastActivityAt. The session must end exactly when the first deadline really passes.
   */
  test.prop([
    fc.record({
      idleTimeoutMs: fc.integer({ min: 0, max: 50 }),
      maxLifetimeMs: fc.integer({ min: 0, max: 400 }),
    }),
    fc.array(fc.record({ gap: fc.integer({ min: 0, max: 60 }), busy: fc.boolean() }), { maxLength: 30 }),
  ])("ends the session at the first passed deadline, never early", (t, events) => {
    let clock = { startedAt: 0, lastActivityAt: 0, busy: false };
    let timerAt: number | undefined;
    let ended: { at: number; kind: string } | undefined;
    const react = (now: number) => {
      const a = timerAction(t, clock, now);
      if (a.kind === "end") ended = { at: now, kind: a.deadline.kind };
      else timerAt = a.kind === "arm" ? now + a.delayMs : undefined;
      if (a.kind === "arm") expect(a.delayMs).toBeGreaterThan(0);
    };
    const runTimersUntil = (until: number) => {
      while (ended === undefined && timerAt !== undefined && timerAt <= until) react(timerAt);
    };
    react(0);
    let now = 0;
    // The model: the session must be ended at the first instant a deadline holds.
    let expected: { at: number; kind: string } | undefined;
    const modelCheck = (from: number, to: number, c: typeof clock) => {
      for (let x = from; x <= to && expected === undefined; x++) {
        if (t.maxLifetimeMs > 0 && x >= c.startedAt + t.maxLifetimeMs) expected = { at: x, kind: "lifetime" };
        else if (t.idleTimeoutMs > 0 && !c.busy && x >= c.lastActivityAt + t.idleTimeoutMs)
          expected = { at: x, kind: "idle" };
      }
    };
    for (const e of events) {
      const next = now + e.gap;
      modelCheck(now, next - 1, clock);
      runTimersUntil(next - 1);
      if (ended !== undefined || expected !== undefined) break;
      now = next;
      clock = { ...clock, lastActivityAt: now, busy: e.busy };
      react(now);
      modelCheck(now, now, clock);
      if (ended !== undefined || expected !== undefined) break;
    }
    modelCheck(now, now + 1000, clock);
    runTimersUntil(now + 1000);
    expect(ended).toEqual(expected);
  });

  it("ends with a clear FATAL naming the limit: 57P05 for idle, 57P01 for lifetime", () => {
    expect(sessionEndError("idle", timers)).toMatchObject({
      code: "PGW_IDLE_TIMEOUT",
      sqlstate: "57P05",
      message: "terminating connection due to idle-session timeout (15 min)",
    });
    expect(sessionEndError("lifetime", timers)).toMatchObject({
      code: "PGW_SESSION_LIFETIME",
      sqlstate: "57P01",
      message: "terminating connection: maximum session lifetime (480 min) reached",
    });
    expect(sessionEndError("idle", { idleTimeoutMs: 1500, maxLifetimeMs: 0 }).message).toContain("(1500 ms)");
  });
});

describe("the shared sweep", () => {
  it("visits at a sixteenth of the shorter deadline, at most a minute apart, never with both off", () => {
    expect(sweepPeriodMs({ idleTimeoutMs: 400, maxLifetimeMs: 0 })).toBe(25);
    expect(sweepPeriodMs({ idleTimeoutMs: 0, maxLifetimeMs: 500 })).toBe(32);
    expect(sweepPeriodMs({ idleTimeoutMs: 800, maxLifetimeMs: 160 })).toBe(10);
    expect(sweepPeriodMs({ idleTimeoutMs: 900_000, maxLifetimeMs: 0 })).toBe(56_250);
    expect(sweepPeriodMs({ idleTimeoutMs: 0, maxLifetimeMs: 8 * 3_600_000 })).toBe(MAX_SWEEP_MS);
    expect(sweepPeriodMs({ idleTimeoutMs: 0, maxLifetimeMs: 0 })).toBeUndefined();
  });

  /**
   * A simulated runtime: the sweep visits every period, the client sends bytes or runs requests
   * in between, and the session only sees what a visit samples. An idle session must end no
   * sooner than one idle timeout after its last activity (a byte, or the end of a request) and no
   * later than 1⅛ of it (+ rounding); a lifetime no sooner than its length and one period late at most.
   */
  test.prop([
    fc.record({
      idleTimeoutMs: fc.integer({ min: 0, max: 2000 }),
      maxLifetimeMs: fc.integer({ min: 0, max: 20_000 }),
    }),
    fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
    fc.array(fc.record({ gap: fc.integer({ min: 1, max: 900 }), busyFor: fc.nat({ max: 3000 }) }), {
      maxLength: 20,
    }),
  ])("ends a session within the documented bounds, never early", (t, offset, requests) => {
    const period = sweepPeriodMs(t);
    if (period === undefined) return;
    // The session joins at 0, somewhere between two passes of the sweep.
    const phase = Math.floor(offset * period);
    // Client activity as the truth: bytes at `at`, then busy until `until`.
    const activity: { at: number; until: number }[] = [];
    let x = 0;
    for (const r of requests) {
      x += r.gap;
      activity.push({ at: x, until: x + r.busyFor });
      x += r.busyFor;
    }
    const busyAt = (now: number) => activity.some((a) => now >= a.at && now < a.until);
    const bytesAt = (now: number) => activity.filter((a) => a.at <= now).length;
    let sample: ActivitySample = { lastActivityAt: 0, bytesSeen: 0 };
    let ended: { at: number; kind: string } | undefined;
    for (let now = phase; ended === undefined && now < 200_000; now += period) {
      const v = visitSession(t, 0, sample, now, bytesAt(now), busyAt(now));
      sample = v.sample;
      if (v.action.kind === "end") ended = { at: now, kind: v.action.deadline.kind };
    }
    expect(ended).toBeDefined();
    const at = ended!.at;
    if (ended!.kind === "lifetime") {
      expect(at).toBeGreaterThanOrEqual(t.maxLifetimeMs);
      expect(at).toBeLessThan(t.maxLifetimeMs + period);
      return;
    }
    // The true start of the idleness that ended the session: its last activity before `at`.
    const last = activity.filter((a) => a.at <= at).at(-1);
    const idleSince = last === undefined ? 0 : last.until;
    expect(busyAt(at)).toBe(false);
    expect(at - idleSince).toBeGreaterThanOrEqual(t.idleTimeoutMs);
    expect(at - idleSince).toBeLessThanOrEqual(t.idleTimeoutMs * 1.125 + 2);
  });
});
