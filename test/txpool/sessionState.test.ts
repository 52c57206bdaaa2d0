import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PgSession } from "../support/pgSession.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  steerTo,
  superuserIn,
  supports,
  targetMissing,
  warmPool,
} from "./target.ts";

/** Session state in transaction mode: what follows the client to another server connection, and what must not. */

const SIZE = 2;
const skip = targetMissing();
const SETTINGS = "SELECT current_setting('work_mem'), current_setting('search_path'), pg_backend_pid()";

describe.skipIf(skip !== undefined)(`session state in transaction mode (${skip ?? "running"})`, () => {
  let fixture: Fixture;
  let target: PooledTarget;
  let role: string;
  let servers: number[];
  let db: pg.Client;
  const open: PgSession[] = [];
  const session = async () => {
    const s = await target.session(role);
    open.push(s);
    return s;
  };
  const namedSession = async (applicationName: string) => {
    const s = await target.session(role, { application_name: applicationName });
    open.push(s);
    return s;
  };
  const other = (pid: number) => servers.find((p) => p !== pid)!;
  let defaults: (string | null)[];

  beforeAll(async () => {
    fixture = await createFixture("state");
    role = fixture.roles[0];
    target = await startTarget(fixture, { pool: { mode: "transaction", size: SIZE } });
    servers = await warmPool(target, role, SIZE);
    db = await superuserIn(fixture.database);
    await db.query("CREATE TABLE state_rows (id int PRIMARY KEY, note text)");
    await db.query(`GRANT ALL ON state_rows TO ${fixture.roles.join(", ")}`);
    const probe = await session();
    defaults = (await probe.query(SETTINGS)).rows[0]!.slice(0, 2);
  });

  afterAll(async () => {
    for (const s of open) s.vanish();
    await db?.end();
    await target?.stop();
  });

  it.skipIf(!supports("sessionState"))(
    "SET survives a server switch and does not leak to the next client of that server",
    async () => {
      const a = await session();
      const set = await a.query(`SET work_mem = '3MB'; SET search_path = pg_catalog, public; ${SETTINGS}`);
      expect(set.error).toBeUndefined();
      const p1 = Number(set.rows[0]![2]);
      let release = await steerTo(target, role, other(p1), SIZE);
      try {
        const moved = await a.query(SETTINGS);
        expect(moved.rows).toEqual([["3MB", "pg_catalog, public", String(other(p1))]]);
      } finally {
        await release();
      }
      // Another client that gets the first server sees none of it.
      release = await steerTo(target, role, p1, SIZE);
      try {
        const b = await session();
        const seen = await b.query(SETTINGS);
        expect(seen.rows).toEqual([[...defaults, String(p1)]]);
      } finally {
        await release();
      }
    },
  );

  it.skipIf(!supports("sessionState"))("RESET and a rolled-back SET are not replayed", async () => {
    const a = await session();
    const r = await a.query(
      `SET work_mem = '9MB'; RESET work_mem; BEGIN; SET search_path = nowhere; ROLLBACK; ${SETTINGS}`,
    );
    expect(r.rows[0]!.slice(0, 2)).toEqual(defaults);
    const release = await steerTo(target, role, other(Number(r.rows[0]![2])), SIZE);
    try {
      expect((await a.query(SETTINGS)).rows[0]!.slice(0, 2)).toEqual(defaults);
    } finally {
      await release();
    }
  });

  it("SET LOCAL lasts one transaction only", async () => {
    const a = await session();
    const inside = await a.query(`BEGIN; SET LOCAL work_mem = '5MB'; ${SETTINGS}`);
    expect(inside.rows[0]![0]).toBe("5MB");
    expect((await a.query("COMMIT")).error).toBeUndefined();
    for (const pid of servers) {
      const release = await steerTo(target, role, pid, SIZE);
      try {
        expect((await a.query(SETTINGS)).rows).toEqual([[...defaults, String(pid)]]);
      } finally {
        await release();
      }
    }
  });

  it("a vanished client's open transaction is rolled back and its locks are freed", async () => {
    const a = await session();
    const r = await a.query(
      "BEGIN; INSERT INTO state_rows VALUES (1, 'uncommitted'); SELECT pg_backend_pid()",
    );
    expect(r.error).toBeUndefined();
    expect(r.status).toBe("T");
    a.vanish();
    // Nobody waits on the row lock: another client inserts the same key at once.
    const b = await session();
    const again = await b.query(
      "SET lock_timeout = '3s'; INSERT INTO state_rows VALUES (1, 'committed'); SELECT note FROM state_rows",
    );
    expect(again.error).toBeUndefined();
    expect(again.rows).toEqual([["committed"]]);
    const left = await db.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
      [fixture.database],
    );
    expect(left.rows).toEqual([{ n: 0 }]);
  });
  it("announces each client's own startup settings at login; logins with the same startup get the same report", async () => {
    const reported = (s: PgSession) =>
      new Map(
        s.wire
          .messages()
          .filter((m) => m.type === "S")
          .map((m) => m.msg.toString("utf8", 5, m.msg.length - 1).split("\0") as [string, string]),
      );
    const alpha = reported(await namedSession("alpha"));
    const beta = reported(await namedSession("beta"));
    expect(alpha.get("application_name")).toBe("alpha");
    expect(beta.get("application_name")).toBe("beta");
    expect(reported(await namedSession("alpha"))).toEqual(alpha);
    // Everything else is the pool's, the same for both.
    expect(new Map([...beta].filter(([k]) => k !== "application_name"))).toEqual(
      new Map([...alpha].filter(([k]) => k !== "application_name")),
    );
    expect(alpha.get("server_version")).toBeDefined();
  });
});
