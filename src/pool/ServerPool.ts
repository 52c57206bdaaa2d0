import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { encodeParameterStatus } from "../protocol/backend.ts";
import type { ServerConnection } from "../runtime/ServerConnection.ts";
import { PreparedStatements } from "./PreparedStatements.ts";
import { SessionState } from "./SessionState.ts";

/** ParameterStatus for a client: the pool's reported values, the client's startup settings over them. */
const startupReport = (
  defaults: ReadonlyMap<string, string>,
  parameters: ReadonlyMap<string, string>,
): Buffer => {
  const own = new Map<string, string>();
  for (const [k, v] of parameters) if (k !== "user" && k !== "database") own.set(k.toLowerCase(), v);
  return Buffer.concat(
    [...defaults].map(([k, v]) => encodeParameterStatus(k, own.get(k.toLowerCase()) ?? v)),
  );
};

export type PoolMode = "session" | "transaction" | "statement";

/** One pool's limits and timeouts (`pool` in the configuration, after overrides). */
export interface PoolSettings {
  readonly mode: PoolMode;
  readonly size: number;
  readonly minIdle: number;
  readonly reserveSize: number;
  readonly reserveAfterMs: number;
  readonly maxClients: number;
  readonly queryWaitTimeoutMs: number;
  readonly serverLifetimeMs: number;
  readonly serverIdleTimeoutMs: number;
  readonly serverConnectTimeoutMs: number;
  readonly serverCheckDelayMs: number;
  readonly serverCheckQuery: string;
  readonly resetQuery: string;
  readonly maxIdle: number;
  /** Statements each server connection keeps prepared; 0 leaves prepared statements unmapped. */
  readonly preparedPerServer: number;
}

/** A client waiting for a server connection; told exactly once. */
export interface Waiter {
  /**
   * Session mode: the startup settings a connection must have been logged in with to serve this
   * client (so RESET and DISCARD ALL return to the client's own startup values, as in
   * PostgreSQL), and that a new login uses. Pooled modes log in with role and database only.
   */
  readonly login?: { readonly key: string; readonly parameters: ReadonlyMap<string, string> };
  granted(server: ServerConnection, waitedMs: number): void;
  failed(error: PgwardenError): void;
}

/** How a pool logs in a new server connection; the outcome goes to the waiter that caused it. */
export type Login = (
  pool: Pool,
  settings: { readonly key: string; readonly parameters: ReadonlyMap<string, string> } | undefined,
) => Promise<ServerConnection | PgwardenError>;

interface Waiting {
  readonly waiter: Waiter;
  readonly since: number;
}

const waitTimeout = (ms: number): PgwardenError =>
  pgwardenError(
    "PGW_POOL_WAIT_TIMEOUT",
    SqlState.insufficientResources,
    `query_wait_timeout: no server connection became free within ${ms} ms`,
  );

const poolClosed = pgwardenError("PGW_SHUTDOWN", SqlState.adminShutdown, "the server pool is closing");

/** Counters in PgBouncer's SHOW STATS units. */
export interface PoolStats {
  assignments: number;
  transactions: number;
  queries: number;
  waitUs: number;
  transactionUs: number;
  queryUs: number;
  received: number;
  sent: number;
}

export const emptyStats = (): PoolStats => ({
  assignments: 0,
  transactions: 0,
  queries: 0,
  waitUs: 0,
  transactionUs: 0,
  queryUs: 0,
  received: 0,
  sent: 0,
});

/**
 * The server connections of one (database, upstream role): a connection never serves another
 * pool, so no role or database of one client reaches another. At most `size` connections
 * (plus `reserveSize` once a client has waited `reserveAfterMs`); clients beyond that wait in
 * order, up to `queryWaitTimeoutMs`. A connection comes back only clean — nothing owed and the
 * last ReadyForQuery `I` — and is handed to the longest waiter or kept idle (LIFO, so the
 * least used ones age out). A connection with a cancel under way serves nobody until the
 * cancel has finished.
 */
export class Pool {
  readonly key: string;
  readonly database: string;
  readonly role: string;
  readonly settings: PoolSettings;
  /** Shared by every client of the pool: server-side names are the pool's. */
  readonly statements: PreparedStatements | undefined;
  /** Parameter values a fresh login reports: a client's settings start from these. */
  defaults: ReadonlyMap<string, string> | undefined;
  readonly stats: PoolStats = emptyStats();
  private readonly login: Login;
  private readonly idle: ServerConnection[] = [];
  /** Every open connection: logging in, linked, resetting, held for a cancel, or idle. */
  readonly servers = new Set<ServerConnection>();
  /** Connections linked to a client now. */
  readonly active = new Set<ServerConnection>();
  private logins = 0;
  private waiting: Waiting[] = [];
  private closed = false;
  /** Clients of this pool, for maxClientsPerPool and SHOW POOLS. */
  clients = 0;

  constructor(key: string, database: string, role: string, settings: PoolSettings, login: Login) {
    this.key = key;
    this.database = database;
    this.role = role;
    this.settings = settings;
    this.login = login;
    this.statements =
      settings.mode !== "session" && settings.preparedPerServer > 0
        ? new PreparedStatements(settings.preparedPerServer)
        : undefined;
  }

  /**
   * A client's starting settings: the pool's defaults with its startup parameters over them.
   * Clients with the same startup parameters share one template (and, until they SET something,
   * its map), so ten thousand idle clients do not hold ten thousand copies.
   */
  startupSettings(
    parameters: ReadonlyMap<string, string>,
    fallback: ReadonlyMap<string, string>,
  ): SessionState {
    return this.startup(parameters, fallback).state;
  }

  /**
   * `startupSettings`, and the ParameterStatus messages that announce them to a client the pool
   * answers itself (pooled modes), as one buffer: logins with the same startup get the same
   * bytes, encoded once with their template.
   */
  startup(
    parameters: ReadonlyMap<string, string>,
    fallback: ReadonlyMap<string, string>,
  ): { readonly state: SessionState; readonly report: Buffer } {
    const key = JSON.stringify([...parameters]);
    let t = this.templates.get(key);
    if (t === undefined) {
      const defaults = this.defaults ?? fallback;
      const own: Record<string, string> = Object.fromEntries(defaults);
      for (const [k, v] of parameters) if (k !== "user" && k !== "database") own[k] = v;
      t = { state: SessionState.fromStartup(own), defaults, parameters, report: undefined };
      if (this.templates.size >= 256) this.templates.clear();
      this.templates.set(key, t);
    }
    t.report ??= startupReport(t.defaults, t.parameters);
    const state = new SessionState();
    state.adoptFrom(t.state);
    return { state, report: t.report };
  }

  private readonly templates = new Map<
    string,
    {
      readonly state: SessionState;
      readonly defaults: ReadonlyMap<string, string>;
      readonly parameters: ReadonlyMap<string, string>;
      report: Buffer | undefined;
    }
  >();

  /** Open connections plus logins under way: what `size` bounds. */
  get open(): number {
    return this.servers.size + this.logins;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  get loginCount(): number {
    return this.logins;
  }

  /** The oldest wait, in µs, for SHOW POOLS' maxwait. */
  maxWaitUs(now = Date.now()): number {
    const first = this.waiting[0];
    return first === undefined ? 0 : (now - first.since) * 1000;
  }

  /** A server connection for `waiter`: an idle one, a new login, or a place in the queue. */
  acquire(waiter: Waiter): void {
    if (this.closed) {
      waiter.failed(poolClosed);
      return;
    }
    const w: Waiting = { waiter, since: Date.now() };
    if (this.waiting.length === 0 && this.serveFromIdle(w)) return;
    // Full, but idle connections logged in for other startup settings: the oldest makes room.
    if (this.waiting.length === 0 && this.open >= this.settings.size && this.idle.length > 0) {
      const oldest = this.idle.shift()!;
      oldest.close();
      this.servers.delete(oldest);
    }
    if (this.waiting.length === 0 && this.open < this.settings.size) {
      this.startLogin(w);
      return;
    }
    this.waiting.push(w);
    this.armWaitTimer();
  }

  /** The client gave up waiting (it closed, or its deadline passed). */
  abandon(waiter: Waiter): void {
    const at = this.waiting.findIndex((w) => w.waiter === waiter);
    if (at < 0) return;
    this.waiting.splice(at, 1);
  }

  /**
   * The linked client is done with `server`, at ReadyForQuery `I` with nothing owed or at its
   * own end. Session mode resets it first; a dirty or old connection is closed.
   */
  release(server: ServerConnection): void {
    this.active.delete(server);
    // A connection that is closed anyway need not wait for its cancels.
    if (!server.reusable) {
      this.settled(server, false);
      return;
    }
    server.whenNoCancels(() => {
      if (this.settings.mode === "session" && server.reusable && this.keeps(server)) {
        void server.reset(this.settings.resetQuery, this.settings.serverConnectTimeoutMs).then((ok) => {
          // DISCARD ALL leaves what the login left.
          if (ok) server.settings.adoptFrom(server.loginSettings);
          this.settled(server, ok);
        });
        return;
      }
      this.settled(server, server.reusable);
    });
  }

  private keeps(server: ServerConnection): boolean {
    const { serverLifetimeMs, maxIdle } = this.settings;
    if (this.closed || maxIdle === 0) return false;
    return serverLifetimeMs === 0 || Date.now() - server.createdAt < serverLifetimeMs;
  }

  private settled(server: ServerConnection, clean: boolean): void {
    if (!clean || !this.keeps(server)) {
      server.close();
      this.refill();
      return;
    }
    const at = firstFor(this.waiting, server.loginKey);
    if (at >= 0) {
      this.grant(takeAt(this.waiting, at), server);
      return;
    }
    if (this.waiting.length > 0) {
      // Waiters need other startup settings: this connection makes room for their login.
      server.close();
      return;
    }
    if (this.idle.length >= this.settings.maxIdle) {
      server.close();
      return;
    }
    server.idleSince = Date.now();
    this.idle.push(server);
  }

  /** A connection closed (its socket, whichever way): it is no longer the pool's. */
  forget(server: ServerConnection): void {
    if (!this.servers.delete(server)) return;
    this.active.delete(server);
    const at = this.idle.indexOf(server);
    if (at >= 0) this.idle.splice(at, 1);
    this.statements?.onServerClosed(server.id);
    this.refill();
  }

  /** Timers of the whole pool: idle and lifetime limits, and `minIdle`. */
  sweep(now: number): void {
    const { serverIdleTimeoutMs, serverLifetimeMs, minIdle } = this.settings;
    for (let i = 0; i < this.idle.length; ) {
      const s = this.idle[i]!;
      const tooOld = serverLifetimeMs > 0 && now - s.createdAt >= serverLifetimeMs;
      const unused = serverIdleTimeoutMs > 0 && now - s.idleSince >= serverIdleTimeoutMs;
      if (tooOld || (unused && this.idle.length > minIdle)) {
        this.idle.splice(i, 1);
        s.close();
      } else i++;
    }
    while (!this.closed && this.idle.length + this.logins < minIdle && this.open < this.settings.size) {
      this.startLogin(undefined);
    }
  }

  /** Stops pooling: idle connections close now, waiters are refused, the rest close when released. */
  close(): void {
    this.closed = true;
    for (const s of this.idle) {
      s.close();
    }
    this.idle.length = 0;
    const waiting = this.waiting;
    this.waiting = [];
    if (this.waitTimer !== undefined) clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    for (const w of waiting) w.waiter.failed(poolClosed);
  }

  private serveFromIdle(w: Waiting): boolean {
    const key = w.waiter.login?.key;
    for (;;) {
      // The most recently used connection logged in with the waiter's startup settings.
      const at = key === undefined ? this.idle.length - 1 : lastWithKey(this.idle, key);
      if (at < 0) return false;
      const server = takeAt(this.idle, at);
      if (!server.reusable) {
        server.close();
        continue;
      }
      const { serverCheckDelayMs, serverCheckQuery } = this.settings;
      if (Date.now() - server.idleSince >= serverCheckDelayMs) {
        // Idle long enough for PostgreSQL or the network to have dropped it: check first.
        this.active.add(server);
        void server.run(serverCheckQuery, this.settings.serverConnectTimeoutMs).then((ok) => {
          this.active.delete(server);
          if (ok) {
            this.grant(w, server);
            return;
          }
          server.close();
          this.acquireAgain(w);
        });
        return true;
      }
      this.grant(w, server);
      return true;
    }
  }

  /** A checked connection failed: the waiter tries again from the front of the queue. */
  private acquireAgain(w: Waiting): void {
    if (this.closed) {
      w.waiter.failed(poolClosed);
      return;
    }
    if (this.serveFromIdle(w)) return;
    if (this.open < this.settings.size) {
      this.startLogin(w);
      return;
    }
    this.waiting.unshift(w);
  }

  private grant(w: Waiting, server: ServerConnection): void {
    this.active.add(server);
    const waited = Date.now() - w.since;
    this.stats.assignments++;
    this.stats.waitUs += waited * 1000;
    w.waiter.granted(server, waited);
  }

  /**
   * One timer per pool, for its oldest waiter: when it fires, every waiter past
   * `queryWaitTimeoutMs` is refused and every one past `reserveAfterMs` may log in a reserve
   * connection. A wait costs no timer of its own.
   */
  private waitTimer: ReturnType<typeof setTimeout> | undefined;

  private armWaitTimer(): void {
    const head = this.waiting[0];
    if (this.waitTimer !== undefined || head === undefined) return;
    const { queryWaitTimeoutMs: limit, reserveSize, reserveAfterMs } = this.settings;
    // A reserve login is due once; a waiter past it with no reserve room is next due at its limit.
    const reserveAt =
      reserveSize > 0 && head.since + reserveAfterMs > Date.now()
        ? head.since + reserveAfterMs
        : Number.POSITIVE_INFINITY;
    const limitAt = limit > 0 ? head.since + limit : Number.POSITIVE_INFINITY;
    const due = Math.min(reserveAt, limitAt);
    if (!Number.isFinite(due)) return;
    this.waitTimer = setTimeout(
      () => {
        this.waitTimer = undefined;
        this.waited();
      },
      Math.max(1, due - Date.now()),
    );
    this.waitTimer.unref?.();
  }

  private waited(): void {
    const now = Date.now();
    const { size, reserveSize, reserveAfterMs, queryWaitTimeoutMs: limit } = this.settings;
    for (let i = 0; i < this.waiting.length; ) {
      const w = this.waiting[i]!;
      const waited = now - w.since;
      if (limit > 0 && waited >= limit) {
        this.waiting.splice(i, 1);
        w.waiter.failed(waitTimeout(limit));
      } else if (reserveSize > 0 && waited >= reserveAfterMs && this.open < size + reserveSize) {
        this.waiting.splice(i, 1);
        this.startLogin(w);
      } else if (waited < reserveAfterMs && (limit === 0 || waited < limit)) {
        break; // Waiters are in arrival order: nobody behind this one is due either.
      } else i++;
    }
    this.armWaitTimer();
  }

  /** Room opened (a connection closed): the longest waiter gets a new login. */
  private refill(): void {
    if (this.closed) return;
    while (this.waiting.length > this.logins && this.open < this.settings.size) {
      const w = this.waiting.shift()!;
      this.startLogin(w);
    }
  }

  /** The pool hears of the connection's close itself: no callback lives as long as the connection. */
  private track(server: ServerConnection): void {
    this.servers.add(server);
    server.whenClosed(this);
  }

  /** ServerClosedListener. */
  serverClosed(server: ServerConnection): void {
    this.forget(server);
  }

  private startLogin(w: Waiting | undefined): void {
    this.logins++;
    void this.login(this, w?.waiter.login).then((result) => {
      this.logins--;
      if (result instanceof Error || !("machine" in result)) {
        if (w !== undefined) w.waiter.failed(result as PgwardenError);
        this.refill();
        return;
      }
      const server = result;
      this.track(server);
      if (this.closed) {
        server.close();
        if (w !== undefined) w.waiter.failed(poolClosed);
        return;
      }
      // Defaults come only from logins without a client's startup settings.
      if (server.loginKey === undefined) this.defaults ??= new Map(server.reported);
      if (w === undefined) {
        this.settled(server, true);
        return;
      }
      this.grant(w, server);
    });
  }
}

/** What decides a pool's settings: the configured defaults, then the first matching override. */
export interface PoolOverrideRule {
  readonly database?: string;
  readonly identity?: string;
  readonly mode?: PoolMode;
  readonly size?: number;
}

/**
 * Every pool, by (database, upstream role), and the one timer that sweeps them all. Pools are
 * made on first use and live as long as the proxy.
 */
export class ServerPool {
  private readonly pools = new Map<string, Pool>();
  private readonly base: PoolSettings;
  private readonly overrides: readonly PoolOverrideRule[];
  private readonly login: Login;
  private timer: ReturnType<typeof setInterval> | undefined;
  private closed = false;

  constructor(base: PoolSettings, overrides: readonly PoolOverrideRule[], login: Login) {
    this.base = base;
    this.overrides = overrides;
    this.login = login;
  }

  /** The mode a client of this identity and database gets. */
  settingsFor(database: string, identity: string): PoolSettings {
    const o = this.overrides.find(
      (r) =>
        (r.database === undefined || r.database === database) &&
        (r.identity === undefined || r.identity === identity),
    );
    if (o === undefined) return this.base;
    return {
      ...this.base,
      ...(o.mode === undefined ? {} : { mode: o.mode }),
      ...(o.size === undefined ? {} : { size: o.size }),
    };
  }

  /**
   * The pool for (database, role). Pools with different modes for the same key are kept apart,
   * so an override never makes a transaction-mode client share a session-mode connection.
   */
  poolFor(database: string, role: string, identity: string): Pool {
    const settings = this.settingsFor(database, identity);
    const key = `${database}/${role}/${settings.mode}/${settings.size}`;
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = new Pool(key, database, role, settings, this.login);
      this.pools.set(key, pool);
      this.startSweep();
      if (this.closed) pool.close();
    }
    return pool;
  }

  all(): readonly Pool[] {
    return [...this.pools.values()];
  }

  /** Idle connections in every pool, for tests and SHOW POOLS. */
  idleCount(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.idleCount;
    return n;
  }

  closeAll(): void {
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    for (const p of this.pools.values()) p.close();
  }

  private startSweep(): void {
    if (this.timer !== undefined || this.closed) return;
    const { serverIdleTimeoutMs, serverLifetimeMs } = this.base;
    const finest = Math.min(...[serverIdleTimeoutMs, serverLifetimeMs, 10_000].filter((n) => n > 0));
    this.timer = setInterval(
      () => {
        const now = Date.now();
        for (const p of this.pools.values()) p.sweep(now);
      },
      Math.max(100, Math.ceil(finest / 4)),
    );
    this.timer.unref?.();
  }
}

// Checkout and release run once per transaction in the pooled modes: these loops take no closure
// and the removals allocate no result array (the usual case is the last idle connection or the
// first waiter, which pop and shift take without moving the rest).

/** The most recently idled connection logged in with `key`, or -1. */
const lastWithKey = (idle: readonly ServerConnection[], key: string): number => {
  for (let i = idle.length - 1; i >= 0; i--) if (idle[i]!.loginKey === key) return i;
  return -1;
};

/** The first waiter a connection logged in with `key` can serve, or -1. */
const firstFor = (waiting: readonly Waiting[], key: string | undefined): number => {
  for (let i = 0; i < waiting.length; i++) {
    const login = waiting[i]!.waiter.login;
    if (login === undefined || login.key === key) return i;
  }
  return -1;
};

const takeAt = <T>(items: T[], at: number): T =>
  at === items.length - 1 ? items.pop()! : at === 0 ? items.shift()! : items.splice(at, 1)[0]!;
