import type { ServerConnection, ServerLossListener } from "../runtime/ServerConnection.ts";

export interface ServerPoolOptions {
  /** Run before a connection serves anyone else, so nothing of one session reaches the next. */
  readonly resetQuery: string;
  /** Idle connections kept per key; more are closed when their client leaves. */
  readonly maxIdlePerKey: number;
}

/**
 * Server connections kept for reuse, by pool key: (database, role, the startup settings the
 * connection was logged in with) — a connection never serves another key, so no role, database
 * or startup setting of one client reaches another. Session mode hands a connection back when its
 * client leaves; the pool keeps it only if it is clean (nothing owed, ReadyForQuery `I`) and the
 * reset query succeeds, so `pgbench -C` no longer pays a PostgreSQL login per client.
 */
export class ServerPool implements ServerLossListener {
  private readonly options: ServerPoolOptions;
  private readonly idle = new Map<string, ServerConnection[]>();
  /** Connections being reset: not yet idle, not anyone's. */
  private readonly resetting = new Set<ServerConnection>();
  private closed = false;

  constructor(options: ServerPoolOptions) {
    this.options = options;
  }

  /** An idle, reset connection for `key`, or undefined: the caller then logs in a new one. */
  take(key: string): ServerConnection | undefined {
    const list = this.idle.get(key);
    for (;;) {
      const server = list?.pop();
      if (server === undefined) return undefined;
      if (list!.length === 0) this.idle.delete(key);
      if (server.reusable) return server;
      server.close();
    }
  }

  /**
   * The client is done with `server`: true when the pool keeps it (clean, and there is room),
   * false when it is not wanted and the caller must close it.
   */
  give(server: ServerConnection): boolean {
    const key = server.poolKey;
    const room = key !== undefined && (this.idle.get(key)?.length ?? 0) < this.options.maxIdlePerKey;
    if (this.closed || !room || !server.reusable) return false;
    server.whenLost(this);
    this.resetting.add(server);
    void server.reset(this.options.resetQuery).then((ok) => {
      this.resetting.delete(server);
      if (!ok || this.closed) {
        server.close();
        return;
      }
      const list = this.idle.get(key);
      if (list === undefined) this.idle.set(key, [server]);
      else list.push(server);
    });
    return true;
  }

  /** A pooled connection's socket closed (PostgreSQL restarted, or an idle timeout upstream). */
  onServerLost(server: ServerConnection): void {
    this.resetting.delete(server);
    const key = server.poolKey;
    if (key === undefined) return;
    const list = this.idle.get(key);
    const at = list?.indexOf(server) ?? -1;
    if (at >= 0) list!.splice(at, 1);
    if (list?.length === 0) this.idle.delete(key);
  }

  /** Idle connections per key, for tests and (later) SHOW POOLS. */
  idleCount(key?: string): number {
    if (key !== undefined) return this.idle.get(key)?.length ?? 0;
    let n = 0;
    for (const l of this.idle.values()) n += l.length;
    return n;
  }

  /** Stops pooling: every idle connection is closed, and so is every one handed back later. */
  closeAll(): void {
    this.closed = true;
    for (const list of this.idle.values()) for (const s of list) s.close();
    this.idle.clear();
    for (const s of this.resetting) s.close();
    this.resetting.clear();
  }
}

/** The pool key: a connection is reused only for the same database, role and startup settings. */
export const poolKey = (parameters: ReadonlyMap<string, string>): string =>
  JSON.stringify([...parameters].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
