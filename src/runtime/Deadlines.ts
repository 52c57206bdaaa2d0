import * as Effect from "effect/Effect";
import type * as Fiber from "effect/Fiber";
import type { DeadlinePhase } from "../machines/actions.ts";
import { SessionSweep } from "./SessionSweep.ts";

/** What a deadline belongs to: told when one of its phases has passed. */
export interface DeadlineOwner {
  readonly id: string;
  onDeadline(phase: DeadlinePhase): void;
}

/**
 * Per-phase deadlines of every connection, run as fibers that sleep on Effect's Clock (so tests
 * can drive them with TestClock). The short ones (login, linger) are a fiber each while armed;
 * sessions' idle and lifetime checks share one sweep, so an idle session costs no timer.
 * Arming a phase again replaces its deadline.
 */
export class Deadlines {
  private readonly fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>;
  private readonly armed = new Map<string, Fiber.Fiber<void>>();
  private readonly sweep: SessionSweep;

  constructor(fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>) {
    this.fork = fork;
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
    const key = `${owner.id}:${phase}`;
    this.armed.get(key)?.interruptUnsafe();
    const fiber = this.fork(
      Effect.sleep(ms).pipe(
        Effect.andThen(
          Effect.sync(() => {
            this.armed.delete(key);
            owner.onDeadline(phase);
          }),
        ),
      ),
    );
    this.armed.set(key, fiber);
  }

  clear(owner: DeadlineOwner, phase: DeadlinePhase): void {
    if (phase === "session") this.sweep.delete(owner);
    const key = `${owner.id}:${phase}`;
    const fiber = this.armed.get(key);
    if (fiber === undefined) return;
    this.armed.delete(key);
    fiber.interruptUnsafe();
  }

  clearAll(owner: DeadlineOwner): void {
    this.clear(owner, "login");
    this.clear(owner, "session");
    this.clear(owner, "linger");
  }

  /** Armed per-phase fibers (login, linger, and any armed "session" phase). */
  get size(): number {
    return this.armed.size;
  }

  /** Sessions in the shared sweep. */
  get watched(): number {
    return this.sweep.size;
  }
}
