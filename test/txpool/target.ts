import pg from "pg";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { serveChild, writeServeFiles } from "../support/hostile.ts";
import { pgbouncerVersion, startPgbouncer } from "../support/pgbouncer.ts";
import { type PgSession, PgSession as Session } from "../support/pgSession.ts";
import { directClient, postgresInfo } from "../support/postgres.ts";
import { startProxy } from "../support/proxy.ts";

/**
 * What the pooling tests run against, chosen by PGW_TXPOOL_TARGET:
 *   pgwarden  (default) pgwarden with a `pool:` section, in-process or as `pgwarden serve`;
 *   pgbouncer a real PgBouncer with the equivalent settings, to check that the tests themselves
 *             are right; features PgBouncer lacks are skipped by `supports` (unless
 *             PGW_TXPOOL_ALL_FEATURES=1).
 * Each test file gets its own database and two upstream roles (two pool keys), so counts read
 * from pg_stat_activity are the file's own.
 */

export type TargetKind = "pgwarden" | "pgbouncer";

export const TARGET: TargetKind = process.env.PGW_TXPOOL_TARGET === "pgbouncer" ? "pgbouncer" : "pgwarden";

export type PoolMode = "session" | "transaction" | "statement";

/** The `pool:` section as pgwarden names it; undefined keys are left out. */
export interface PoolSettings {
  readonly mode: PoolMode;
  readonly size: number;
  readonly minIdle?: number;
  readonly reserveSize?: number;
  readonly reserveAfterMs?: number;
  readonly maxClientsPerPool?: number;
  readonly queryWaitTimeoutMs?: number;
  readonly idleInTransactionTimeoutMs?: number;
  readonly transactionTimeoutMs?: number;
  readonly serverLifetimeMs?: number;
  readonly serverIdleTimeoutMs?: number;
  readonly serverConnectTimeoutMs?: number;
  readonly serverCheckDelayMs?: number;
  readonly resetQuery?: string;
  readonly preparedStatements?: { readonly enabled?: boolean; readonly perServerCapacity?: number };
  readonly pinning?: { readonly onSessionState: "pin" | "refuse" };
}

export interface StartOptions {
  readonly pool: PoolSettings;
  /** limits.maxClientConnections / PgBouncer's max_client_conn. */
  readonly maxClientConnections?: number;
  /** Run pgwarden as a `pgwarden serve` child process (its own file-descriptor limit). */
  readonly asProcess?: boolean;
  /** Where PostgreSQL is; a dead port tests the server connect timeout. */
  readonly upstreamPort?: number;
}

/** Things PgBouncer (the installed version) does not do, so its run skips their tests. */
export type Feature =
  | "preparedStatements"
  | "sessionState"
  | "pinning"
  | "maxClientsPerPool"
  | "transactionTimeout"
  | "clientLimitSqlstate";

export const supports = (feature: Feature): boolean =>
  // PGW_TXPOOL_ALL_FEATURES=1 runs everything on PgBouncer too, to see how it falls short.
  TARGET === "pgwarden" || process.env.PGW_TXPOOL_ALL_FEATURES === "1" || pgbouncerHas(feature);

/** Whether the installed PgBouncer has a feature (decides its settings too). */
const pgbouncerHas = (feature: Feature): boolean => {
  const v = pgbouncerVersion() ?? [0, 0, 0];
  const atLeast = (major: number, minor: number) => v[0]! > major || (v[0] === major && v[1]! >= minor);
  switch (feature) {
    case "preparedStatements":
      return atLeast(1, 21);
    case "transactionTimeout":
      return atLeast(1, 25);
    default:
      return false;
  }
};

/**
 * Why these tests cannot run on the chosen target, or undefined. Against pgwarden they always run:
 * a pooling test that skipped itself there would pass without testing anything.
 */
export const targetMissing = (): string | undefined =>
  TARGET === "pgbouncer" && pgbouncerVersion() === undefined ? "PgBouncer not installed" : undefined;

export interface Fixture {
  readonly database: string;
  /** Two upstream roles; each is also the client identity that maps to it. */
  readonly roles: readonly [string, string];
  readonly password: string;
}

/** Creates (or re-creates) the file's database and its two roles, idempotently. */
export const createFixture = async (tag: string): Promise<Fixture> => {
  const info = postgresInfo();
  const database = `pgw_tx_${tag}`;
  const roles = [`pgw_tx_${tag}_a`, `pgw_tx_${tag}_b`] as const;
  const admin = await directClient();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    for (const r of roles) {
      await admin.query(
        `DO $$ BEGIN CREATE ROLE ${r} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
      );
      await admin.query(`ALTER ROLE ${r} LOGIN NOSUPERUSER PASSWORD '${info.rolePassword}'`);
    }
    await admin.query(`CREATE DATABASE ${database}`);
  } finally {
    await admin.end();
  }
  const db = await superuserIn(database);
  try {
    await db.query(`GRANT CREATE, USAGE ON SCHEMA public TO ${roles.join(", ")}`);
    await db.query(`ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO ${roles.join(", ")}`);
  } finally {
    await db.end();
  }
  return { database, roles, password: info.rolePassword };
};

/** A superuser connection straight to PostgreSQL, in the fixture's database. */
export const superuserIn = async (database: string): Promise<pg.Client> => {
  const i = postgresInfo();
  const c = new pg.Client({ host: i.host, port: i.port, user: i.user, password: i.password, database });
  await c.connect();
  return c;
};

export interface PooledTarget {
  readonly kind: TargetKind;
  readonly port: number;
  readonly fixture: Fixture;
  /** The proxy's process id when it runs as its own process. */
  readonly pid: number | undefined;
  connection(role?: string): { host: string; port: number; user: string; password: string; database: string };
  session(role?: string, parameters?: Record<string, string>): Promise<PgSession>;
  /** Environment for psql/pgbench against this target. */
  stop(): Promise<void>;
}

const ms = (v: number) => String(v / 1000);

/** PgBouncer's settings for the same pool. */
const pgbouncerSettings = (o: StartOptions): Record<string, string | number> => {
  const p = o.pool;
  const s: Record<string, string | number> = {
    pool_mode: p.mode,
    default_pool_size: p.size,
    max_client_conn: o.maxClientConnections ?? 1000,
    // pgwarden's default; PgBouncer's own default (120 s) would make a broken test hang longer.
    query_wait_timeout: ms(p.queryWaitTimeoutMs ?? 120_000),
  };
  if (p.minIdle !== undefined) s.min_pool_size = p.minIdle;
  if (p.reserveSize !== undefined) s.reserve_pool_size = p.reserveSize;
  if (p.reserveAfterMs !== undefined) s.reserve_pool_timeout = ms(p.reserveAfterMs);
  if (p.idleInTransactionTimeoutMs !== undefined)
    s.idle_transaction_timeout = ms(p.idleInTransactionTimeoutMs);
  if (p.transactionTimeoutMs !== undefined && pgbouncerHas("transactionTimeout"))
    s.transaction_timeout = ms(p.transactionTimeoutMs);
  if (p.serverLifetimeMs !== undefined) s.server_lifetime = ms(p.serverLifetimeMs);
  if (p.serverIdleTimeoutMs !== undefined) s.server_idle_timeout = ms(p.serverIdleTimeoutMs);
  if (p.serverConnectTimeoutMs !== undefined) s.server_connect_timeout = ms(p.serverConnectTimeoutMs);
  if (p.serverCheckDelayMs !== undefined) s.server_check_delay = ms(p.serverCheckDelayMs);
  if (p.resetQuery !== undefined) s.server_reset_query = p.resetQuery;
  if (pgbouncerHas("preparedStatements"))
    s.max_prepared_statements =
      p.preparedStatements?.enabled === false ? 0 : (p.preparedStatements?.perServerCapacity ?? 200);
  return s;
};

/** pgwarden's configuration sections for the same pool (listen/log are added by the starter). */
export const pgwardenSections = (fixture: Fixture, o: StartOptions): Record<string, unknown> => {
  const info = postgresInfo();
  return {
    upstream: {
      host: info.host,
      port: o.upstreamPort ?? info.port,
      user: fixture.roles[0],
      password: fixture.password,
    },
    access: { grants: fixture.roles.map((r) => ({ identity: r, databases: ["*"], role: r })) },
    auth: { method: "trust" },
    limits: { maxClientConnections: o.maxClientConnections ?? 1000 },
    pool: JSON.parse(JSON.stringify(o.pool)),
  };
};

export const startTarget = async (fixture: Fixture, o: StartOptions): Promise<PooledTarget> => {
  let port: number;
  let pid: number | undefined;
  let stop: () => Promise<void>;
  if (TARGET === "pgbouncer") {
    if (o.upstreamPort !== undefined) throw new Error("upstreamPort is not mapped for PgBouncer");
    const b = await startPgbouncer({
      users: fixture.roles.map((name) => ({ name, password: fixture.password })),
      settings: pgbouncerSettings(o),
    });
    ({ port, pid } = b);
    stop = b.stop;
  } else if (o.asProcess === true) {
    port = await freePort();
    const files = await writeServeFiles({
      ...pgwardenSections(fixture, o),
      listen: { host: "127.0.0.1", port },
      log: { level: "warn" },
      shutdown: { drainTimeoutMs: 1000 },
    });
    const child = await serveChild(files.config, port);
    pid = child.child.pid;
    stop = async () => {
      child.child.kill("SIGTERM");
      const t = setTimeout(() => child.kill(), 10_000);
      await child.exited;
      clearTimeout(t);
    };
  } else {
    const proxy = await startProxy({ ...pgwardenSections(fixture, o), log: { level: "warn" } });
    port = proxy.port;
    stop = () => proxy.close();
  }
  const connection = (role: string = fixture.roles[0]) => ({
    host: "127.0.0.1",
    port,
    user: role,
    password: fixture.password,
    database: fixture.database,
  });
  return {
    kind: TARGET,
    port,
    fixture,
    pid,
    connection,
    session: (role = fixture.roles[0], parameters) =>
      Session.login({ port, user: role, database: fixture.database, password: fixture.password, parameters }),
    stop,
  };
};

/** Client backends PostgreSQL has for the fixture's database, by role. */
export const backends = async (
  fixture: Fixture,
): Promise<{ pid: number; usename: string; state: string; started: string }[]> => {
  const c = await directClient();
  try {
    const r = await c.query(
      "SELECT pid, usename, coalesce(state, '') AS state, backend_start::text AS started FROM pg_stat_activity" +
        " WHERE datname = $1 AND backend_type = 'client backend' ORDER BY pid",
      [fixture.database],
    );
    return r.rows as { pid: number; usename: string; state: string; started: string }[];
  } finally {
    await c.end();
  }
};

/**
 * Makes the next transaction of a client land on server backend `pid`: every other server
 * connection of the pool is held in an open transaction by a helper session, which the returned
 * function releases. Needs a pool whose size is `size` and all of whose connections exist.
 */
export const steerTo = async (
  target: PooledTarget,
  role: string,
  pid: number,
  size: number,
): Promise<() => Promise<void>> => {
  const holders: PgSession[] = [];
  const release = async () => {
    for (const h of holders.splice(0)) {
      if (!h.closed) await h.query("COMMIT");
      h.terminate();
    }
  };
  try {
    // Hold every server connection at once, then give back only the wanted one.
    const pids: number[] = [];
    for (let i = 0; i < size; i++) {
      const h = await target.session(role);
      holders.push(h);
      pids.push(Number((await h.query("BEGIN; SELECT pg_backend_pid()")).rows[0]?.[0]));
    }
    const i = pids.indexOf(pid);
    if (i < 0) throw new Error(`backend ${pid} is not one of the pool's (${pids.join(", ")})`);
    const [freed] = holders.splice(i, 1);
    await freed!.query("COMMIT");
    freed!.terminate();
    return release;
  } catch (e) {
    await release();
    throw e;
  }
};

/** Opens sessions until the pool has `size` server connections, each seen once; returns their pids. */
export const warmPool = async (target: PooledTarget, role: string, size: number): Promise<number[]> => {
  const held: PgSession[] = [];
  try {
    const pids: number[] = [];
    for (let i = 0; i < size; i++) {
      const s = await target.session(role);
      held.push(s);
      const r = await s.query("BEGIN; SELECT pg_backend_pid()");
      pids.push(Number(r.rows[0]?.[0]));
    }
    return pids;
  } finally {
    for (const s of held) {
      await s.query("COMMIT");
      s.terminate();
    }
  }
};
