import * as Schema from "effect/Schema";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { canonicalIp } from "./cidr.ts";
import { NonNegativeInt, PositiveInt, withDefault } from "./schemaKit.ts";

/**
 * Session controls: concurrent sessions per identity and per source address (AC-10), and the
 * idle (SC-10, AC-12) and lifetime deadlines. Counting lives here; the runtime owns sockets and
 * timers and asks these helpers what to do.
 */

export const SessionControlsConfig = Schema.Struct({
  /** Concurrent sessions one identity may hold; left out, no limit. */
  maxPerIdentity: Schema.optionalKey(PositiveInt),
  /** Concurrent sessions from one source address; left out, no limit. */
  maxPerSource: Schema.optionalKey(PositiveInt),
  /** Per-identity limits that replace `maxPerIdentity` for those identities. */
  perIdentity: withDefault(Schema.Record(Schema.String, PositiveInt), {}),
  /** A session with no client activity and no request in flight this long is ended; 0 turns it off. */
  idleTimeoutMs: withDefault(NonNegativeInt, 900_000),
  /** Any session is ended this long after it started; 0 turns it off. */
  maxLifetimeMs: withDefault(NonNegativeInt, 0),
});
export type SessionControlsConfig = typeof SessionControlsConfig.Type;

export type SessionLimits = Pick<SessionControlsConfig, "maxPerIdentity" | "maxPerSource" | "perIdentity">;

export interface SessionLease {
  readonly identity: string;
  /** The canonical source key the lease counts against. */
  readonly source: string;
  /** Gives the slot back; calling it again does nothing. */
  release(): void;
}

export interface SessionRefusal {
  readonly refused: "identity" | "source";
  readonly limit: number;
}

export const isSessionRefusal = (r: SessionLease | SessionRefusal): r is SessionRefusal => "refused" in r;

export interface SessionCounter {
  /** Takes a slot for both the identity and the source, or neither. */
  readonly tryAcquire: (identity: string, source: string | undefined) => SessionLease | SessionRefusal;
  /** New limits apply to later acquisitions; sessions already over a lowered limit keep running. */
  readonly reconfigure: (limits: SessionLimits) => void;
  readonly activeFor: (identity: string) => number;
  readonly activeFrom: (source: string | undefined) => number;
  /** Number of identities and sources with at least one session; both 0 when all leases are released. */
  readonly tracked: () => { readonly identities: number; readonly sources: number };
}

/** Unparsable or missing peer addresses share one bucket, so they cannot dodge the limit. */
const UNKNOWN_SOURCE = "(unknown)";
const sourceKey = (source: string | undefined): string =>
  (source === undefined ? undefined : canonicalIp(source)) ?? UNKNOWN_SOURCE;

const bump = (counts: Map<string, number>, key: string, by: 1 | -1): void => {
  const n = (counts.get(key) ?? 0) + by;
  // Zero entries are deleted so the maps hold only live sessions.
  if (n <= 0) counts.delete(key);
  else counts.set(key, n);
};

/** A lease as an object with a method: a session holds no closure for giving its slot back. */
class Lease implements SessionLease {
  readonly identity: string;
  readonly source: string;
  private readonly byIdentity: Map<string, number>;
  private readonly bySource: Map<string, number>;
  private held = true;

  constructor(
    identity: string,
    source: string,
    byIdentity: Map<string, number>,
    bySource: Map<string, number>,
  ) {
    this.identity = identity;
    this.source = source;
    this.byIdentity = byIdentity;
    this.bySource = bySource;
  }

  release(): void {
    if (!this.held) return;
    this.held = false;
    bump(this.byIdentity, this.identity, -1);
    bump(this.bySource, this.source, -1);
  }
}

export const createSessionCounter = (initial: SessionLimits): SessionCounter => {
  let limits = initial;
  const byIdentity = new Map<string, number>();
  const bySource = new Map<string, number>();
  return {
    tryAcquire: (identity, source) => {
      const key = sourceKey(source);
      const identityLimit = Object.hasOwn(limits.perIdentity, identity)
        ? limits.perIdentity[identity]
        : limits.maxPerIdentity;
      if (identityLimit !== undefined && (byIdentity.get(identity) ?? 0) >= identityLimit)
        return { refused: "identity", limit: identityLimit };
      if (limits.maxPerSource !== undefined && (bySource.get(key) ?? 0) >= limits.maxPerSource)
        return { refused: "source", limit: limits.maxPerSource };
      bump(byIdentity, identity, 1);
      bump(bySource, key, 1);
      return new Lease(identity, key, byIdentity, bySource);
    },
    reconfigure: (next) => {
      limits = next;
    },
    activeFor: (identity) => byIdentity.get(identity) ?? 0,
    activeFrom: (source) => bySource.get(sourceKey(source)) ?? 0,
    tracked: () => ({ identities: byIdentity.size, sources: bySource.size }),
  };
};

/** The error a refused client gets, worded as PostgreSQL words its own connection limits. */
export const sessionLimitError = (
  refusal: SessionRefusal,
  identity: string,
  source: string | undefined,
): PgwardenError =>
  pgwardenError(
    "PGW_SESSION_LIMIT",
    SqlState.tooManyConnections,
    refusal.refused === "identity"
      ? `too many connections for role ${JSON.stringify(identity)} (limit ${refusal.limit})`
      : `too many connections from host ${sourceKey(source)} (limit ${refusal.limit})`,
  );

export type DeadlineKind = "idle" | "lifetime";

export interface Deadline {
  readonly kind: DeadlineKind;
  /** Epoch milliseconds. */
  readonly at: number;
}

/** What the runtime knows about a session's timing, all in epoch milliseconds. */
export interface SessionClock {
  readonly startedAt: number;
  /** Time of the last client message. */
  readonly lastActivityAt: number;
  /** A request is in flight upstream: a long query is not idleness. */
  readonly busy: boolean;
}

export type SessionTimers = Pick<SessionControlsConfig, "idleTimeoutMs" | "maxLifetimeMs">;

/** The deadline that comes first; on a tie, lifetime, since activity cannot postpone it. */
export const nextDeadline = (timers: SessionTimers, clock: SessionClock): Deadline | undefined => {
  const lifetime =
    timers.maxLifetimeMs > 0
      ? { kind: "lifetime" as const, at: clock.startedAt + timers.maxLifetimeMs }
      : undefined;
  const idle =
    timers.idleTimeoutMs > 0 && !clock.busy
      ? { kind: "idle" as const, at: clock.lastActivityAt + timers.idleTimeoutMs }
      : undefined;
  if (lifetime === undefined) return idle;
  if (idle === undefined) return lifetime;
  return idle.at < lifetime.at ? idle : lifetime;
};

/** Longest delay setTimeout honours; a longer one fires at once, so long deadlines are re-armed. */
export const MAX_TIMER_MS = 2_147_483_647;

export type TimerAction =
  | { readonly kind: "end"; readonly deadline: Deadline }
  | { readonly kind: "arm"; readonly delayMs: number; readonly deadline: Deadline }
  | { readonly kind: "none" };

/** What to do now, given the session's clock: end it, or check again later (`arm` says when at the latest). */
export const timerAction = (timers: SessionTimers, clock: SessionClock, now: number): TimerAction => {
  const deadline = nextDeadline(timers, clock);
  if (deadline === undefined) return { kind: "none" };
  if (now >= deadline.at) return { kind: "end", deadline };
  return { kind: "arm", delayMs: Math.min(deadline.at - now, MAX_TIMER_MS), deadline };
};

/** The longest the shared sweep waits between two visits of a session, however long the timeouts. */
export const MAX_SWEEP_MS = 60_000;

/**
 * How often the shared sweep visits sessions: a sixteenth of the shorter deadline (at most a
 * minute), undefined when both are off. Activity is sampled at visits, so an idle session ends
 * between 1 and 1 + 2/16 idle timeouts after its last activity, and a lifetime within 1/16 late.
 */
export const sweepPeriodMs = (timers: SessionTimers): number | undefined => {
  const idle = timers.idleTimeoutMs > 0 ? timers.idleTimeoutMs : Number.POSITIVE_INFINITY;
  const lifetime = timers.maxLifetimeMs > 0 ? timers.maxLifetimeMs : Number.POSITIVE_INFINITY;
  const shortest = Math.min(idle, lifetime);
  return Number.isFinite(shortest) ? Math.min(MAX_SWEEP_MS, Math.ceil(shortest / 16)) : undefined;
};

/** What the runtime keeps per session between visits: no timer, three numbers. */
export interface ActivitySample {
  readonly lastActivityAt: number;
  /** Client bytes read at the last visit, or BUSY_SAMPLE when a request was in flight then. */
  readonly bytesSeen: number;
}

/** Marks a visit that found the session busy: the next visit counts as activity, whatever the bytes. */
export const BUSY_SAMPLE = -1;

/**
 * One visit of the sweep: activity is new client bytes, a request in flight now, or one that was
 * in flight at the last visit (it ended since, so the idle time starts after it). Each is dated
 * at the visit, never earlier than it happened, so no session ends early.
 */
export const visitSession = (
  timers: SessionTimers,
  startedAt: number,
  last: ActivitySample,
  now: number,
  bytesRead: number,
  busy: boolean,
): { readonly sample: ActivitySample; readonly action: TimerAction } => {
  const active = busy || bytesRead !== last.bytesSeen;
  const sample = active ? { lastActivityAt: now, bytesSeen: busy ? BUSY_SAMPLE : bytesRead } : last;
  return {
    sample,
    action: timerAction(timers, { startedAt, lastActivityAt: sample.lastActivityAt, busy }, now),
  };
};

const duration = (ms: number): string =>
  ms % 60_000 === 0 ? `${ms / 60_000} min` : ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;

/** The FATAL a session ends with when a deadline passes. */
export const sessionEndError = (kind: DeadlineKind, timers: SessionTimers): PgwardenError =>
  kind === "idle"
    ? pgwardenError(
        "PGW_IDLE_TIMEOUT",
        SqlState.idleSessionTimeout,
        `terminating connection due to idle-session timeout (${duration(timers.idleTimeoutMs)})`,
      )
    : pgwardenError(
        "PGW_SESSION_LIFETIME",
        SqlState.adminShutdown,
        `terminating connection: maximum session lifetime (${duration(timers.maxLifetimeMs)}) reached`,
      );
