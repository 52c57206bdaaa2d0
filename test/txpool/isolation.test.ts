import type pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { sleep } from "../support/hostile.ts";
import { msg, type PgSession, typesOf } from "../support/pgSession.ts";
import { directClient } from "../support/postgres.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  superuserIn,
  targetMissing,
} from "./target.ts";

/**
 * Two identities (two pool keys) through one pooler: nothing one leaves on a server connection is
 * ever seen by the other, and no PostgreSQL backend ever serves both keys.
 */

const skip = targetMissing();
const ROUNDS = 6;

describe.skipIf(skip !== undefined)(`tenant isolation in transaction mode (${skip ?? "running"})`, () => {
  let fixture: Fixture;
  let target: PooledTarget;
  let admin: pg.Client;
  /** Alice's sessions of one test: ended after it, since what they do may pin a backend. */
  const alices: PgSession[] = [];
  const open: PgSession[] = [];
  const session = async (role: string) => {
    const s = await target.session(role);
    open.push(s);
    return s;
  };

  beforeAll(async () => {
    fixture = await createFixture("iso");
    target = await startTarget(fixture, { pool: { mode: "transaction", size: 3 } });
    // In the fixture's database: NOTIFY reaches only listeners of the same database.
    admin = await superuserIn(fixture.database);
  });

  afterEach(() => {
    for (const s of alices.splice(0)) s.terminate();
  });

  afterAll(async () => {
    for (const s of open) s.vanish();
    await admin?.end();
    await target?.stop();
  });

  /** Runs `check` in ROUNDS separate transactions from each of three sessions of `role`. */
  const fromMany = async (role: string, check: (s: PgSession) => Promise<void>) => {
    const sessions = [await session(role), await session(role), await session(role)];
    for (let i = 0; i < ROUNDS; i++) await Promise.all(sessions.map(check));
  };

  it("temporary tables", async () => {
    const [a, b] = fixture.roles;
    const alice = await session(a);
    alices.push(alice);
    const made = await alice.query(
      "CREATE TEMP TABLE iso_tmp (secret text); INSERT INTO iso_tmp VALUES ('a-only')",
    );
    expect(made.error).toBeUndefined();
    await fromMany(b, async (s) => {
      const r = await s.query(
        "SELECT to_regclass('pg_temp.iso_tmp') IS NULL, (SELECT count(*) FROM pg_class WHERE relname = 'iso_tmp' AND relnamespace = pg_my_temp_schema())",
      );
      expect(r.rows).toEqual([["t", "0"]]);
      expect((await s.query("SELECT * FROM iso_tmp")).error?.code).toBe("42P01");
    });
  });

  it("SET values", async () => {
    const [a, b] = fixture.roles;
    const alice = await session(a);
    alices.push(alice);
    expect(
      (
        await alice.query(
          "SET work_mem = '7MB'; SET application_name = 'alice-secret'; SET myapp.tenant = 'alice'",
        )
      ).error,
    ).toBeUndefined();
    await fromMany(b, async (s) => {
      const r = await s.query(
        "SELECT current_setting('work_mem'), current_setting('application_name'), current_setting('myapp.tenant', true)",
      );
      expect(r.error).toBeUndefined();
      expect(r.rows[0]![0]).not.toBe("7MB");
      expect(r.rows[0]![1]).not.toBe("alice-secret");
      expect(r.rows[0]![2] ?? "").toBe("");
    });
  });

  it("prepared statements, protocol and SQL", async () => {
    const [a, b] = fixture.roles;
    const alice = await session(a);
    alices.push(alice);
    expect(
      typesOf(await alice.exchange([msg.parse("iso_stmt", "SELECT 'alice statement'"), msg.sync()])),
    ).toBe("1 Z");
    expect((await alice.query("PREPARE iso_sql AS SELECT 'alice sql statement'")).error).toBeUndefined();
    await fromMany(b, async (s) => {
      const bind = await s.exchange([msg.bind("iso_stmt"), msg.execute(), msg.sync()]);
      expect(typesOf(bind)).toBe("E Z");
      expect((await s.query("EXECUTE iso_sql")).error?.code).toBe("26000");
      const seen = await s.query(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%alice%'",
      );
      expect(seen.rows).toEqual([["0"]]);
    });
  });

  it("LISTEN registrations", async () => {
    const [a, b] = fixture.roles;
    const alice = await session(a);
    alices.push(alice);
    expect((await alice.query("LISTEN iso_alice_channel")).error).toBeUndefined();
    const bobs = [await session(b), await session(b)];
    for (let i = 0; i < ROUNDS; i++) {
      await admin.query("NOTIFY iso_alice_channel, 'for alice only'");
      for (const s of bobs) {
        const r = await s.query(
          "SELECT count(*) FROM pg_listening_channels() c WHERE c = 'iso_alice_channel'",
        );
        expect(r.rows).toEqual([["0"]]);
      }
    }
    await sleep(200);
    for (const s of bobs) expect(s.pending().filter((m) => m.type === "A")).toEqual([]);
    expect(bobs.flatMap((s) => s.wire.messages()).filter((m) => m.type === "A")).toEqual([]);
  });

  it("cursors", async () => {
    const [a, b] = fixture.roles;
    const alice = await session(a);
    alices.push(alice);
    const declared = await alice.query(
      "BEGIN; DECLARE iso_cur CURSOR WITH HOLD FOR SELECT 'alice row'; COMMIT",
    );
    expect(declared.error).toBeUndefined();
    await fromMany(b, async (s) => {
      expect((await s.query("FETCH iso_cur")).error?.code).toBe("34000");
      expect((await s.query("SELECT count(*) FROM pg_cursors WHERE name = 'iso_cur'")).rows).toEqual([["0"]]);
    });
  });

  it("pg_stat_activity never shows a backend moving between (usename, datname)", async () => {
    const keyOf = new Map<string, string>();
    const moved: string[] = [];
    let sampling = true;
    const watcher = await directClient();
    const sampler = (async () => {
      while (sampling) {
        const r = await watcher.query(
          "SELECT pid, backend_start::text AS started, usename, datname FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = ANY($1)",
          [fixture.roles],
        );
        for (const row of r.rows as { pid: number; started: string; usename: string; datname: string }[]) {
          // pid plus start time names one backend even if the OS reuses the pid.
          const id = `${row.pid}@${row.started}`;
          const key = `${row.usename}/${row.datname}`;
          const before = keyOf.get(id);
          if (before === undefined) keyOf.set(id, key);
          else if (before !== key) moved.push(`${id}: ${before} → ${key}`);
        }
        await sleep(5);
      }
    })();
    // Both identities hammer their pools; every transaction reports who PostgreSQL thinks it is.
    const worker = async (role: string) => {
      const s = await session(role);
      for (let i = 0; i < 40; i++) {
        const r = await s.query("SELECT session_user, current_user, pg_backend_pid()");
        expect(r.error).toBeUndefined();
        expect(r.rows[0]!.slice(0, 2)).toEqual([role, role]);
        const pid = r.rows[0]![2]!;
        const direct = await admin.query("SELECT usename FROM pg_stat_activity WHERE pid = $1", [pid]);
        if (direct.rows.length > 0) expect(direct.rows[0].usename).toBe(role);
      }
    };
    try {
      await Promise.all(fixture.roles.flatMap((r) => [worker(r), worker(r), worker(r), worker(r)]));
    } finally {
      sampling = false;
      await sampler;
      await watcher.end();
    }
    expect(keyOf.size).toBeGreaterThanOrEqual(2);
    expect(moved).toEqual([]);
    // Pool size 3 per key: never more than three backends per role.
    const perRole = new Map<string, Set<string>>();
    for (const [id, key] of keyOf) perRole.set(key, (perRole.get(key) ?? new Set()).add(id));
    for (const ids of perRole.values()) expect(ids.size).toBeLessThanOrEqual(3);
  });
});
