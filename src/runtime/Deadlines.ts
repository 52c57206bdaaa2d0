import { Effect, type Fiber } from "effect";
import type { DeadlinePhase } from "../machines/actions.ts";

/**
 * Per-phase deadlines of every connection, run as fibers that sleep on Effect's Clock (so tests
 * can drive them with TestClock). A connection holds no fiber while nothing is armed: an idle
 * session costs no timer. Arming a phase again replaces its deadline.
 */
export class Deadlines {
  private readonly fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>;
  private readonly armed = new Map<string, Fiber.Fiber<void>>();

  constructor(fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>) {
    this.fork = fork;
  }

  arm(owner: string, phase: DeadlinePhase, ms: number, fire: () => void): void {
    const key = `${owner}:${phase}`;
    this.armed.get(key)?.interruptUnsafe();
    const fiber = this.fork(
      Effect.sleep(ms).pipe(
        Effect.andThen(
          Effect.sync(() => {
            this.armed.delete(key);
            fire();
          }),
        ),
      ),
    );
    this.armed.set(key, fiber);
  }

  clear(owner: string, phase: DeadlinePhase): void {
    const key = `${owner}:${phase}`;
    const fiber = this.armed.get(key);
    if (fiber === undefined) return;
    this.armed.delete(key);
    fiber.interruptUnsafe();
  }

  clearAll(owner: string): void {
    this.clear(owner, "login");
    this.clear(owner, "linger");
  }

  get size(): number {
    return this.armed.size;
  }
}
