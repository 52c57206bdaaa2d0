import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "../pooldiff/harness.ts";
import type { PgSession } from "../support/pgSession.ts";
import { TARGET } from "../txpool/target.ts";
import { freshLook, leave } from "./probe.ts";

/**
 * Session mode, pool of one (docs/pooling.md, src/pool/ServerPool.ts): a client that leaves at
 * ReadyForQuery `I` with nothing owed gives its backend back after DISCARD ALL, and the next
 * client (same startup settings) gets that backend — its BackendKeyData carries the real PID —
 * with nothing of the previous client visible: settings, protocol-level and SQL prepared
 * statements, the unnamed statement, temporary tables and sequences, advisory locks, LISTEN,
 * WITH HOLD cursors, lastval(), reported ParameterStatus. A client that leaves inside a
 * transaction, with an extended batch half sent, or in the middle of a query leaves a connection
 * that is not clean: it is closed, and the next client gets a new backend.
 */
const ctx = setupDiff("sd_reuse", { mode: "session", size: 1 });

const DIRTY = [
  "SET work_mem = '7MB'",
  "SET application_name = 'leaver'",
  "SET TimeZone = 'Europe/Paris'",
  "SET DateStyle = 'German'",
  "SET myapp.x = 'v1'",
  "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
  "PREPARE sq AS SELECT 1",
  "CREATE TEMP TABLE sd_tmp (a int)",
  "CREATE TEMP SEQUENCE sd_tseq",
  "SELECT nextval('sd_tseq')",
  "SELECT pg_advisory_lock(42)",
  "LISTEN sd_chan",
  "DECLARE sdc CURSOR WITH HOLD FOR SELECT 1",
];

/** Leaves every kind of session state, then a named and the unnamed protocol-level statement. */
const dirty = async (s: PgSession) => {
  for (const q of DIRTY) expect((await s.query(q)).error).toBeUndefined();
  expect(await exchange(s, [msg.parse("p1", "SELECT 1"), msg.parse("", "SELECT 2"), msg.sync()])).toEqual([
    "1",
    "1",
    "Z:I",
  ]);
};

const reference = async () => {
  const d = await ctx.direct();
  try {
    return await freshLook(d, { lastval: true });
  } finally {
    await leave([d]);
  }
};

/** The next client: its backend, and what it sees of its session. */
const next = async () => {
  const n = await ctx.pooled();
  try {
    const look = await freshLook(n, { lastval: true });
    return { look, pid: await n.backendPid(), key: n.processId };
  } finally {
    await leave([n]);
  }
};

describe("session mode: the next client of a server connection", () => {
  const ways: { name: string; reused: boolean; end: (s: PgSession) => Promise<void> }[] = [
    { name: "after a Terminate at ReadyForQuery I", reused: true, end: (s) => leave([s]) },
    {
      name: "after the client vanished at ReadyForQuery I",
      reused: true,
      end: async (s) => {
        s.vanish();
        await new Promise((r) => setTimeout(r, 100));
      },
    },
    {
      name: "after a failed statement, at ReadyForQuery I",
      reused: true,
      end: async (s) => {
        expect(await simple(s, "SELECT 1/0")).toEqual(["E:22012", "Z:I"]);
        await leave([s]);
      },
    },
    {
      name: "after leaving inside a transaction",
      reused: false,
      end: async (s) => {
        expect(await simple(s, "BEGIN")).toEqual(["C:BEGIN", "Z:T"]);
        await leave([s]);
      },
    },
    {
      name: "after leaving a failed transaction",
      reused: false,
      end: async (s) => {
        expect(await simple(s, "BEGIN; SELECT 1/0")).toEqual(["C:BEGIN", "E:22012", "Z:E"]);
        await leave([s]);
      },
    },
    {
      name: "after leaving an extended batch without its Sync",
      reused: false,
      end: async (s) => {
        s.send(msg.parse("", "SELECT 3"), msg.bind(""), msg.execute(), msg.flush());
        await s.wire.until(() => s.pending().some((m) => m.type === "C"), 3000);
        await leave([s]);
      },
    },
    {
      name: "after leaving in the middle of a query",
      reused: false,
      end: async (s) => {
        s.send(msg.query("SELECT pg_sleep(0.2)"));
        await new Promise((r) => setTimeout(r, 50));
        await leave([s]);
        await new Promise((r) => setTimeout(r, 300));
      },
    },
  ];

  for (const way of ways)
    it(`${way.reused ? "reuses" : "does not reuse"} the backend ${way.name}, and shows nothing of it`, async () => {
      const s = await ctx.pooled();
      const pid = await s.backendPid();
      await dirty(s);
      await way.end(s);
      const n = await next();
      // pgwarden's session mode hands out the backend's real PID (docs/pooling.md); PgBouncer does not.
      if (TARGET === "pgwarden") expect(n.key).toBe(n.pid);
      if (way.reused) expect(n.pid).toBe(pid);
      else expect(n.pid).not.toBe(pid);
      expect(n.look).toEqual(await reference());
    });

  it("a cancel sent as the previous client's query ends does not reach the next client", async () => {
    for (let i = 0; i < 5; i++) {
      const a = await ctx.pooled();
      const pid = await a.backendPid();
      // The cancel goes out once the answer is in: PostgreSQL finds the backend idle (or already
      // running the next client's statement, which it must not cancel).
      expect(await simple(a, "SELECT 1")).toEqual(["T[23]", 'D["1"]', "C:SELECT 1", "Z:I"]);
      const cancelled = a.cancel();
      a.terminate();
      const b = await ctx.pooled();
      try {
        expect(await simple(b, "SELECT pg_sleep(0.1)::text")).toEqual([
          "T[25]",
          'D[""]',
          "C:SELECT 1",
          "Z:I",
        ]);
        expect(await b.backendPid()).toBe(pid);
      } finally {
        await cancelled;
        await leave([b]);
      }
    }
  });

  it("a role set with SET ROLE does not outlive its client", async () => {
    const [own, other] = ctx.fixture.roles;
    await ctx.admin(`GRANT ${other} TO ${own}`);
    const a = await ctx.pooled();
    const pid = await a.backendPid();
    expect((await a.query(`SET ROLE ${other}`)).error).toBeUndefined();
    expect(await a.value("SELECT current_user")).toBe(other);
    await leave([a]);
    const b = await ctx.pooled();
    try {
      expect(await b.backendPid()).toBe(pid);
      expect(await b.value("SELECT current_user || '/' || session_user")).toBe(`${own}/${own}`);
    } finally {
      await leave([b]);
    }
  });

  it("a notification on a channel the previous client listened to does not reach the next one", async () => {
    const a = await ctx.pooled();
    const pid = await a.backendPid();
    expect((await a.query("LISTEN sd_note")).error).toBeUndefined();
    await leave([a]);
    const b = await ctx.pooled();
    try {
      expect(await b.backendPid()).toBe(pid);
      await ctx.admin("NOTIFY sd_note, 'for the previous client'");
      await new Promise((r) => setTimeout(r, 100));
      // Notifications are delivered before ReadyForQuery of the next query at the latest.
      const r = await b.exchange([msg.query("SELECT 1")]);
      expect([...b.wire.messages(0), ...r].filter((m) => m.type === "A")).toEqual([]);
    } finally {
      await leave([b]);
    }
  });

  it("does not hand a connection logged in with other startup settings to a client", async () => {
    const a = await ctx.pooled({ application_name: "startup-app", TimeZone: "Asia/Tokyo" });
    expect(await a.value("SELECT current_setting('application_name')")).toBe("startup-app");
    await dirty(a);
    await leave([a]);
    const n = await next();
    expect(n.look).toEqual(await reference());
    // Same startup settings again: RESET ALL returns to them, as on a dedicated connection
    // (pgwarden logs session-mode connections in with the client's startup settings; PgBouncer
    // returns to the role's defaults instead).
    if (TARGET !== "pgwarden") return;
    const b = await ctx.pooled({ application_name: "startup-app", TimeZone: "Asia/Tokyo" });
    const d = await ctx.direct({ application_name: "startup-app", TimeZone: "Asia/Tokyo" });
    try {
      for (const s of [b, d]) await s.query("SET TimeZone = 'UTC'; RESET ALL");
      expect(await freshLook(b, { lastval: true })).toEqual(await freshLook(d, { lastval: true }));
    } finally {
      await leave([b, d]);
    }
  });
});
