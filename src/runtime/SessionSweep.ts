import * as Effect from "effect/Effect";
import type * as Fiber from "effect/Fiber";

/** A member of the sweep: told on every pass, it checks its own idle and lifetime deadlines. */
export interface Swept {
  onDeadline(phase: "session"): void;
}

/**
 * One timer for the idle and lifetime deadlines of every session: a fiber on Effect's Clock that
 * visits each member once per period. A session costs one Set entry instead of a timer, a fiber
 * and closures of its own; with no member the fiber is stopped, so an empty proxy holds no timer.
 *
 * The period is the shortest any member asked for since the sweep was last empty, so a member
 * is visited at least as often as it asked (a reload that lowers a timeout takes effect at once).
 */
export class SessionSweep {
  private readonly fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>;
  private readonly members = new Set<Swept>();
  private periodMs = Number.POSITIVE_INFINITY;
  private fiber: Fiber.Fiber<void> | undefined;

  constructor(fork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>) {
    this.fork = fork;
  }

  /** Visits `member` every `periodMs` or more often from now on; adding it again only updates the period. */
  add(member: Swept, periodMs: number): void {
    this.members.add(member);
    if (periodMs < this.periodMs) {
      this.periodMs = periodMs;
      this.restart();
    }
  }

  delete(member: Swept): void {
    if (!this.members.delete(member) || this.members.size > 0) return;
    this.fiber?.interruptUnsafe();
    this.fiber = undefined;
    this.periodMs = Number.POSITIVE_INFINITY;
  }

  has(member: Swept): boolean {
    return this.members.has(member);
  }

  get size(): number {
    return this.members.size;
  }

  /** The current period in milliseconds; Infinity while the sweep is empty. */
  get period(): number {
    return this.periodMs;
  }

  private restart(): void {
    this.fiber?.interruptUnsafe();
    const pass = Effect.sync(() => this.visit());
    this.fiber = this.fork(Effect.forever(Effect.andThen(Effect.sleep(this.periodMs), pass)));
  }

  /**
   * One pass. Members may leave (a session ends) or join while it runs; a Set's iteration allows
   * both. A member that throws leaves the sweep and its defect is reported on a fiber of its own,
   * as when each session had its own timer: one broken session must not stop the others' deadlines.
   */
  private visit(): void {
    for (const member of this.members) {
      try {
        member.onDeadline("session");
      } catch (e) {
        this.delete(member);
        this.fork(Effect.die(e));
      }
    }
  }
}
