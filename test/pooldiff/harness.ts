import { afterAll, beforeAll } from "vitest";
import { errorOf, msg, PgSession, type Reply } from "../support/pgSession.ts";
import { postgresInfo } from "../support/postgres.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  type PoolSettings,
  startTarget,
  superuserIn,
} from "../txpool/target.ts";

/**
 * Differential harness: the same raw protocol exchanges go to pgwarden (a pooled mode) and to a
 * dedicated PostgreSQL connection of the same role; what each client observes is reduced to a
 * comparable trace (message types, SQLSTATEs, rows, ReadyForQuery status, ParameterStatus).
 */

export { msg };

export interface Observed {
  /** One token per backend message: `1`, `2`, `D[a,b]`, `E:42P01`, `Z:T`, `C:SELECT 1`, `S:name=value`. */
  readonly trace: readonly string[];
}

/** Backend messages to a comparable token list (BackendKeyData and notices dropped). */
export const traceOf = (replies: readonly Reply[]): string[] => sortStatusRuns(tokens(replies));

/** PostgreSQL's order among ParameterStatus messages sent together carries no meaning. */
const sortStatusRuns = (t: string[]): string[] => {
  const out: string[] = [];
  let run: string[] = [];
  for (const x of [...t, ""]) {
    if (x.startsWith("S:")) {
      run.push(x);
      continue;
    }
    out.push(...run.sort());
    run = [];
    if (x !== "") out.push(x);
  }
  return out;
};

const tokens = (replies: readonly Reply[]): string[] => {
  const out: string[] = [];
  for (const r of replies) {
    switch (r.type) {
      case "E":
        out.push(`E:${errorOf(r).code}`);
        break;
      case "Z":
        out.push(`Z:${String.fromCharCode(r.msg[5]!)}`);
        break;
      case "C":
        out.push(`C:${r.msg.toString("utf8", 5, r.msg.length - 1)}`);
        break;
      case "D": {
        const n = r.msg.readInt16BE(5);
        const cols: (string | null)[] = [];
        let p = 7;
        for (let i = 0; i < n; i++) {
          const len = r.msg.readInt32BE(p);
          p += 4;
          if (len < 0) cols.push(null);
          else {
            cols.push(r.msg.toString("utf8", p, p + len));
            p += len;
          }
        }
        out.push(`D${JSON.stringify(cols)}`);
        break;
      }
      case "S": {
        const body = r.msg.subarray(5, r.msg.length - 1).toString("utf8");
        out.push(`S:${body.replace("\0", "=")}`);
        break;
      }
      case "T": {
        // Column type OIDs: a shared statement planned for another client shows here.
        const n = r.msg.readInt16BE(5);
        const oids: number[] = [];
        let p = 7;
        for (let i = 0; i < n; i++) {
          p = r.msg.indexOf(0, p) + 1;
          oids.push(r.msg.readInt32BE(p + 6));
          p += 18;
        }
        out.push(`T${JSON.stringify(oids)}`);
        break;
      }
      case "t": {
        const n = r.msg.readInt16BE(5);
        const oids = Array.from({ length: n }, (_, i) => r.msg.readInt32BE(7 + 4 * i));
        out.push(`t${JSON.stringify(oids)}`);
        break;
      }
      case "N":
      case "K":
        break;
      default:
        out.push(r.type);
    }
  }
  return out;
};

export interface DiffContext {
  fixture: Fixture;
  target: PooledTarget;
  /** A client of pgwarden, closed after the file. */
  pooled(parameters?: Record<string, string>): Promise<PgSession>;
  /** A dedicated PostgreSQL connection as the same role, closed after the file. */
  direct(parameters?: Record<string, string>): Promise<PgSession>;
  /** Superuser SQL in the fixture's database. */
  admin(sql: string): Promise<void>;
}

/** Starts pgwarden in front of a fresh fixture database for one test file. */
export const setupDiff = (tag: string, pool: PoolSettings): DiffContext => {
  const open: PgSession[] = [];
  const ctx = {} as DiffContext;
  beforeAll(async () => {
    ctx.fixture = await createFixture(tag);
    ctx.target = await startTarget(ctx.fixture, { pool });
  });
  afterAll(async () => {
    for (const s of open.splice(0)) s.vanish();
    await ctx.target?.stop();
  });
  ctx.pooled = async (parameters) => {
    const s = await ctx.target.session(ctx.fixture.roles[0], parameters);
    open.push(s);
    return s;
  };
  ctx.direct = async (parameters) => {
    const i = postgresInfo();
    const s = await PgSession.login({
      port: i.port,
      user: ctx.fixture.roles[0],
      database: ctx.fixture.database,
      password: ctx.fixture.password,
      parameters,
    });
    open.push(s);
    return s;
  };
  ctx.admin = async (sql) => {
    const c = await superuserIn(ctx.fixture.database);
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  return ctx;
};

/** Sends `messages` (holding `syncs` sync points) and returns the trace of the replies. */
export const exchange = async (s: PgSession, messages: readonly Buffer[], syncs = 1): Promise<string[]> =>
  traceOf(await s.exchange(messages, syncs));

/** A simple query's trace. */
export const simple = (s: PgSession, sql: string): Promise<string[]> => exchange(s, [msg.query(sql)]);
