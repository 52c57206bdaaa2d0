import type * as Clock from "effect/Clock";
import * as Effect from "effect/Effect";
import type * as Fiber from "effect/Fiber";
import type { DeadlinePhase } from "../machines/actions.ts";
import { SessionSweep } from "./SessionSweep.ts";

/** What a deadline belongs to: told when one of its phases has passed. */
export interface DeadlineOwner {
  readonly id: string;
  onDeadline(phase: DeadlinePhase): void;
}

/** One armed phase: its place in the heap is kept so that clearing it is a removal, not a mark. */
interface Armed {
  readonly at: number;
  readonly owner: DeadlineOwner;
  readonly phase: DeadlinePhase;
  index: number;
}

/**
 * Per-phase deadlines of every connection on Effect's Clock (so tests can drive them with
 * TestClock). The short ones (login, linger) sit in one min-heap by due time, with one fiber
 * sleeping until the earliest: a login arms and clears a heap entry, not a fiber, a timer and an
 * interruption of its own (which every login used to leave behind as garbage). Sessions' idle and
 * lifetime checks share one sweep, so an idle session costs no timer either. Arming a phase
 * again replaces its deadline.
 */
export class Deadlines {
  private readonly fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>;
  private readonly clock: Clock.Clock;
  private readonly sweep: SessionSweep;
  private readonly heap: Armed[] = [];
  /** Each phase's armed entries by owner: a lookup without a key string per arm. */
  private readonly byPhase = new Map<DeadlinePhase, Map<DeadlineOwner, Armed>>();
  /** The fiber sleeping until `wakeAt`, the earliest due time when it was forked. */
  private fiber: Fiber.Fiber<void> | undefined;
  private wakeAt = Number.POSITIVE_INFINITY;

  /** `clock` is the one the fibers `fork` runs sleep on, read directly when a phase is armed. */
  constructor(fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>, clock: Clock.Clock) {
    this.fork = fork;
    this.clock = clock;
    this.sweep = new SessionSweep(fork);
  }

  /** `owner.onDeadline("session")` runs every `periodMs` or sooner until `unwatch` or `clearAll`. */
  watch(owner: DeadlineOwner, periodMs: number): void {
    this.sweep.add(owner, periodMs);
  }

  unwatch(owner: DeadlineOwner): void {
    this.sweep.delete(owner);
  }

  /** Arms `phase` for `owner`; when it passes, `owner.onDeadline(phase)` runs. */
  arm(owner: DeadlineOwner, phase: DeadlinePhase, ms: number): void {
    let armed = this.byPhase.get(phase);
    if (armed === undefined) {
      armed = new Map();
      this.byPhase.set(phase, armed);
    }
    const before = armed.get(owner);
    if (before !== undefined) this.remove(before);
    const entry: Armed = { at: this.now() + ms, owner, phase, index: 0 };
    armed.set(owner, entry);
    this.push(entry);
    if (entry.at < this.wakeAt) this.reschedule();
  }

  clear(owner: DeadlineOwner, phase: DeadlinePhase): void {
    if (phase === "session") this.sweep.delete(owner);
    const armed = this.byPhase.get(phase);
    const entry = armed?.get(owner);
    if (entry === undefined) return;
    armed!.delete(owner);
    // The sleeping fiber stays: it wakes for a cleared head, finds nothing due and sleeps until
    // the next head, or stops when there is none. One early wake costs less than a new fiber
    // per clear, and an idle proxy holds no timer once its last due time has passed.
    this.remove(entry);
  }

  clearAll(owner: DeadlineOwner): void {
    this.clear(owner, "login");
    this.clear(owner, "session");
    this.clear(owner, "linger");
  }

  /** Armed phases (login, linger, and any armed "session" phase). */
  get size(): number {
    return this.heap.length;
  }

  /** Sessions in the shared sweep. */
  get watched(): number {
    return this.sweep.size;
  }

  /** Milliseconds on the clock's monotonic time: a wall-clock step must not fire or hold back a deadline. */
  private now(): number {
    return Number(this.clock.monotonicTimeNanosUnsafe() / 1_000_000n);
  }

  private stop(): void {
    this.fiber?.interruptUnsafe();
    this.fiber = undefined;
    this.wakeAt = Number.POSITIVE_INFINITY;
  }

  /** One fiber sleeps until the earliest due time, then fires what is due. */
  private reschedule(): void {
    this.stop();
    const head = this.heap[0];
    if (head === undefined) return;
    this.wakeAt = head.at;
    const wait = Math.max(0, head.at - this.now());
    this.fiber = this.fork(
      Effect.andThen(
        Effect.sleep(wait),
        Effect.sync(() => this.due()),
      ),
    );
  }

  /**
   * Fires every phase now due, each taken out before its owner hears of it (an owner may arm or
   * clear again from `onDeadline`). An owner that throws is reported on a fiber of its own, as
   * when each phase had its own: one broken connection must not stop the others' deadlines.
   */
  private due(): void {
    this.fiber = undefined;
    this.wakeAt = Number.POSITIVE_INFINITY;
    const now = this.now();
    for (let head = this.heap[0]; head !== undefined && head.at <= now; head = this.heap[0]) {
      this.byPhase.get(head.phase)?.delete(head.owner);
      this.remove(head);
      try {
        head.owner.onDeadline(head.phase);
      } catch (e) {
        this.fork(Effect.die(e));
      }
    }
    if (this.fiber === undefined) this.reschedule();
  }

  private push(entry: Armed): void {
    entry.index = this.heap.length;
    this.heap.push(entry);
    this.up(entry.index);
  }

  private remove(entry: Armed): void {
    const last = this.heap.pop()!;
    if (last === entry) return;
    this.place(last, entry.index);
    this.up(last.index);
    this.down(last.index);
  }

  private place(entry: Armed, i: number): void {
    this.heap[i] = entry;
    entry.index = i;
  }

  /** Moves the entry at `i` towards the root while it is due before its parent. */
  private up(i: number): void {
    const entry = this.heap[i]!;
    let at = i;
    for (let parent = (at - 1) >> 1; at > 0 && this.heap[parent]!.at > entry.at; parent = (at - 1) >> 1) {
      this.place(this.heap[parent]!, at);
      at = parent;
    }
    this.place(entry, at);
  }

  /** Moves the entry at `i` towards the leaves while a child is due before it. */
  private down(i: number): void {
    const heap = this.heap;
    const entry = heap[i]!;
    let at = i;
    for (;;) {
      let child = 2 * at + 1;
      if (child + 1 < heap.length && heap[child + 1]!.at < heap[child]!.at) child++;
      if (child >= heap.length || entry.at <= heap[child]!.at) break;
      this.place(heap[child]!, at);
      at = child;
    }
    this.place(entry, at);
  }
}
