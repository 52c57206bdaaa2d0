import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PgSession } from "../support/pgSession.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  superuserIn,
  supports,
  targetMissing,
} from "./target.ts";

/**
 * State that cannot move between server connections, both ways pgwarden can be configured:
 * `pin` keeps the backend with the client (the state keeps working across transactions, and other
 * clients still get the pool's other connection); `refuse` answers 0A000 naming the feature and
 * leaves nothing behind.
 */

const SIZE = 2;
const skip = targetMissing() ?? (supports("pinning") ? undefined : "no pinning");

interface PinCase {
  readonly name: string;
  /** Starts the state (one simple Query). */
  readonly start: string;
  /** Run in later transactions: works only on the pinned backend. */
  readonly use: string;
  /** What the refusal's message must name. */
  readonly named: RegExp;
  /** Run by the refused client in later transactions: what the state left (a count, must be 0). */
  readonly trace: string;
}

const CASES: readonly PinCase[] = [
  {
    name: "LISTEN",
    start: "LISTEN pin_channel",
    use: "SELECT count(*) FROM pg_listening_channels() c WHERE c = 'pin_channel'",
    named: /LISTEN/i,
    trace: "SELECT count(*) FROM pg_listening_channels() c WHERE c = 'pin_channel'",
  },
  {
    name: "temporary table",
    start: "CREATE TEMP TABLE pin_tmp AS SELECT 1 AS x",
    use: "SELECT count(*) FROM pin_tmp",
    named: /temp/i,
    trace: "SELECT count(*) FROM pg_class WHERE relname = 'pin_tmp'",
  },
  {
    name: "session advisory lock",
    start: "SELECT pg_advisory_lock(424242)",
    use: "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242 AND pid = pg_backend_pid()",
    named: /advisory/i,
    trace: "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242",
  },
  {
    name: "WITH HOLD cursor",
    start: "BEGIN; DECLARE pin_cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 100) g; COMMIT",
    use: "SELECT count(*) FROM pg_cursors WHERE name = 'pin_cur'",
    named: /hold|cursor/i,
    trace: "SELECT count(*) FROM pg_cursors WHERE name = 'pin_cur'",
  },
  {
    name: "SQL PREPARE",
    start: "PREPARE pin_prep AS SELECT 1",
    use: "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pin_prep'",
    named: /prepare/i,
    trace: "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pin_prep'",
  },
];

const setup = (onSessionState: "pin" | "refuse", tag: string) => {
  const state = {} as { fixture: Fixture; target: PooledTarget; open: PgSession[] };
  beforeAll(async () => {
    state.fixture = await createFixture(tag);
    state.target = await startTarget(state.fixture, {
      pool: { mode: "transaction", size: SIZE, pinning: { onSessionState } },
    });
    state.open = [];
  });
  afterAll(async () => {
    for (const s of state.open ?? []) s.vanish();
    await state.target?.stop();
  });
  const session = async () => {
    const s = await state.target.session(state.fixture.roles[0]);
    state.open.push(s);
    return s;
  };
  return { state, session };
};

describe.skipIf(skip !== undefined)(`pinning: onSessionState pin (${skip ?? "running"})`, () => {
  const { state, session } = setup("pin", "pin");

  for (const c of CASES) {
    it(`${c.name} keeps the backend with the client while others share the rest`, async () => {
      const a = await session();
      const started = await a.query(`${c.start}`);
      expect(started.error).toBeUndefined();
      const pinned = Number(await a.value("SELECT pg_backend_pid()"));
      // Other clients keep running, on the pool's other connection only.
      const others = [await session(), await session(), await session()];
      for (let i = 0; i < 5; i++) {
        const [mine, ...theirs] = await Promise.all([
          a.query(`${c.use}; SELECT pg_backend_pid()`),
          ...others.map((o) => o.query("SELECT pg_backend_pid()")),
        ]);
        expect(mine!.error).toBeUndefined();
        expect(mine!.rows).toEqual([["1"], [String(pinned)]]);
        for (const t of theirs) expect(Number(t.rows[0]![0])).not.toBe(pinned);
      }
      a.terminate();
    });
  }

  it("a NOTIFY reaches a pinned listener between its transactions", async () => {
    const a = await session();
    await a.query("LISTEN pin_wakeup");
    // NOTIFY reaches listeners of the same database only.
    const admin = await superuserIn(state.fixture.database);
    try {
      await admin.query("NOTIFY pin_wakeup, 'hello'");
    } finally {
      await admin.end();
    }
    await a.wire.until((w) => w.messages().some((m) => m.type === "A"), 5000, "NotificationResponse");
    const n = a.wire.messages().find((m) => m.type === "A")!;
    expect(n.msg.includes(Buffer.from("pin_wakeup\0hello\0"))).toBe(true);
  });
});

describe.skipIf(skip !== undefined)(`pinning: onSessionState refuse (${skip ?? "running"})`, () => {
  const { session } = setup("refuse", "refuse");

  for (const c of CASES) {
    it(`${c.name} is refused with 0A000 naming it, and leaves nothing behind`, async () => {
      const a = await session();
      const r = await a.query(c.start);
      expect(r.error?.code).toBe("0A000");
      expect(r.error?.message).toMatch(c.named);
      // The session goes on, in a clean transaction state.
      expect(await a.value("SELECT 'still usable'")).toBe("still usable");
      expect((await a.query("SELECT 1")).status).toBe("I");
      for (let i = 0; i < 4; i++) expect(await a.value(c.trace)).toBe("0");
    });
  }
});
