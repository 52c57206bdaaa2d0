import * as Effect from "effect/Effect";
import type * as Fiber from "effect/Fiber";
import type { DeadlinePhase } from "../machines/actions.ts";

/**
 * Per-phase deadlines of every connection, run as fibers that sleep on Effect's Clock (so tests
 * can drive them with TestClock). A connection holds no fiber while nothing is armed: an idle
 * session costs no timer. Arming a phase again replaces its deadline.
 */
/** What a deadline belongs to: told when one of its phases has passed. */
export interface DeadlineOwner {
  readonly id: string;
  onDeadline(phase: DeadlinePhase): void;
}

export class Deadlines {
  private readonly fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>;
  private readonly armed = new Map<string, Fiber.Fiber<void>>();

  constructor(fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>) {
    this.fork = fork;
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

  get size(): number {
    return this.armed.size;
  }
}
