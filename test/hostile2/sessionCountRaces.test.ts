import type { Socket } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScramClient } from "../../src/auth/scramClient.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { encodeSASLInitialResponse, encodeSASLResponse } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { authMessages, eventually, sleep, tcpTap, verifier } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Connect/disconnect races against the session counters (sessions.maxPerIdentity,
 * sessions.maxPerSource) and the client cap: bursts of clients that vanish at every phase of the
 * login — right after the startup packet, after SASLInitialResponse, straight after their
 * SASLResponse (while pgwarden verifies it and logs in upstream), right after AuthenticationOk,
 * after ReadyForQuery — and bursts that fail: a wrong password, a database an access rule
 * rejects, a database no grant covers, a database PostgreSQL does not have (the upstream login
 * fails after the lease was taken), and clients refused by the session limit itself. Afterwards
 * the counts must be back: exactly `maxPerIdentity` sessions of one identity get in again, and one
 * more is refused. PostgreSQL frees a backend slot (and its per-role count) when the backend
 * exits, whatever phase it was in; PgBouncer likewise drops a client from max_user_connections /
 * max_client_conn on disconnect at any phase.
 */

const PASSWORD = "alice-password";
const BOB_PASSWORD = "bob-password";
const PER_IDENTITY = 2;
const PER_SOURCE = 3;
const BURST = 8;

type Phase = (w: WireClient) => Promise<void>;

const startup = (user: string, database: string) =>
  encodeStartup(
    new Map([
      ["user", user],
      ["database", database],
    ]),
  );

const waitFor = (w: WireClient, pred: (w: WireClient) => boolean, ms = 3000) =>
  w.until((x) => pred(x) || x.closed || x.errorCode() !== undefined, ms, "phase").catch(() => {});

/** Logs in as far as `stopAt`, then destroys the socket without a word. */
const vanishAt =
  (
    stopAt: "startup" | "sasl-first" | "sasl-final" | "auth-ok" | "ready",
    database: string,
    user = "alice",
    password = PASSWORD,
  ): Phase =>
  async (w) => {
    w.send(startup(user, database));
    await waitFor(w, (x) => authMessages(x, 10).length > 0);
    if (stopAt === "startup") return w.close();
    // Refused before any credential (an access rule): the answer is in.
    if (authMessages(w, 10).length === 0) {
      codes.push(w.errorCode() ?? "no answer");
      return w.close();
    }
    const scram = createScramClient(password);
    w.send(encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(scram.clientFirst())));
    await waitFor(w, (x) => authMessages(x, 11).length > 0);
    if (stopAt === "sasl-first") return w.close();
    const cont = authMessages(w, 11)[0];
    if (cont === undefined) return w.close();
    const final = scram.handleServerFirst(cont.toString("utf8", 9));
    if (isPgwardenError(final)) throw new Error(final.message);
    w.send(encodeSASLResponse(Buffer.from(final)));
    if (stopAt === "sasl-final") return w.close();
    await waitFor(w, (x) => authMessages(x, 0).length > 0);
    if (stopAt === "auth-ok") return w.close();
    await waitFor(w, (x) => x.messages().some((m) => m.type === "Z"));
    codes.push(w.errorCode() ?? "ok");
    w.close();
  };

/** What the clients that went all the way were told: "ok" or the SQLSTATE. */
const codes: string[] = [];

const login = async (proxy: TestProxy, user: string, password: string) => {
  const c = new pg.Client({
    host: "127.0.0.1",
    port: proxy.port,
    user,
    password,
    database: postgresInfo().appDatabase,
  });
  c.on("error", () => {});
  try {
    await c.connect();
    await c.query("SELECT 1");
    return { ok: true as const, client: c };
  } catch (e) {
    await c.end().catch(() => {});
    return { ok: false as const, code: (e as { code?: string }).code, message: (e as Error).message };
  }
};

for (const mode of ["session", "transaction"] as const) {
  describe(`session counts after connect/disconnect races (${mode} mode)`, () => {
    let proxy: TestProxy;
    beforeAll(async () => {
      const info = postgresInfo();
      proxy = await startProxy(
        {
          upstream: { user: info.appRole, password: info.rolePassword },
          access: {
            rules: [
              { name: "no-forbidden", databases: ["forbidden"], action: "reject" },
              { name: "default", action: "allow" },
            ],
            grants: [
              { identity: "alice", databases: [info.appDatabase, "nosuchdb_h2"], role: info.appRole },
              { identity: "bob", databases: [info.appDatabase], role: info.appRole },
            ],
          },
          sessions: { maxPerIdentity: PER_IDENTITY, maxPerSource: PER_SOURCE, idleTimeoutMs: 0 },
          limits: { maxClientConnections: 4 * BURST, lingerMs: 200 },
          pool: { mode, size: 4 },
          log: { level: "warn" },
        },
        new Map([
          ["alice", verifier(PASSWORD)],
          ["bob", verifier(BOB_PASSWORD)],
        ]),
      );
    });
    afterAll(() => proxy?.close());

    const db = () => postgresInfo().appDatabase;
    /** The answers a burst that goes all the way must get (53300: beyond the per-identity cap). */
    const expected: Record<string, readonly string[]> = {
      "vanish after ReadyForQuery": ["ok", "53300"],
      "a wrong password": ["28P01"],
      "a database an access rule rejects": ["28000"],
      "a database no grant covers": ["28000"],
      "a database PostgreSQL does not have (upstream login fails after the lease)": ["3D000", "53300"],
    };
    const phases: Record<string, () => Phase> = {
      "vanish after the startup packet": () => vanishAt("startup", db()),
      "vanish after SASLInitialResponse": () => vanishAt("sasl-first", db()),
      "vanish right after SASLResponse (verification, upstream login)": () => vanishAt("sasl-final", db()),
      "vanish right after AuthenticationOk": () => vanishAt("auth-ok", db()),
      "vanish after ReadyForQuery": () => vanishAt("ready", db()),
      "a wrong password": () => vanishAt("ready", db(), "alice", "wrong"),
      "a database an access rule rejects": () => vanishAt("ready", "forbidden"),
      "a database no grant covers": () => vanishAt("ready", "postgres"),
      "a database PostgreSQL does not have (upstream login fails after the lease)": () =>
        vanishAt("ready", "nosuchdb_h2"),
    };

    /** Exactly PER_IDENTITY alice sessions get in, then 53300; bob gets the source's last slot. */
    const countsAreBack = async () => {
      expect(
        await eventually(() => proxy.server.sessions.size === 0, 3000),
        `client connections left: ${proxy.server.sessions.size}`,
      ).toBe(true);
      const held: pg.Client[] = [];
      try {
        for (let i = 0; i < PER_IDENTITY; i++) {
          const r = await login(proxy, "alice", PASSWORD);
          expect(r.ok, `alice session ${i + 1} of ${PER_IDENTITY} refused: ${!r.ok && r.message}`).toBe(true);
          if (r.ok) held.push(r.client);
        }
        const over = await login(proxy, "alice", PASSWORD);
        expect(over.ok ? "connected" : over.code).toBe("53300");
        const bob = await login(proxy, "bob", BOB_PASSWORD);
        expect(bob.ok, `bob refused: ${!bob.ok && bob.message}`).toBe(true);
        if (bob.ok) held.push(bob.client);
        const bob2 = await login(proxy, "bob", BOB_PASSWORD);
        expect(bob2.ok ? "connected" : bob2.message).toBe(
          "too many connections from host 127.0.0.1 (limit 3)",
        );
      } finally {
        await Promise.all(held.map((c) => c.end().catch(() => {})));
      }
    };

    for (const [what, phase] of Object.entries(phases)) {
      it(`${BURST} at once, ${what}: the counts come back`, async () => {
        codes.length = 0;
        const ws = await Promise.all(Array.from({ length: BURST }, () => WireClient.open(proxy.port)));
        try {
          await Promise.all(ws.map((w) => phase()(w)));
        } finally {
          for (const w of ws) w.close();
        }
        const want = expected[what];
        if (want !== undefined) {
          expect(codes).toHaveLength(BURST);
          for (const c of codes) expect(want).toContain(c);
        }
        await countsAreBack();
      });
    }

    it("clients refused by the session limit itself give nothing back that they did not take", async () => {
      const held: pg.Client[] = [];
      for (let i = 0; i < PER_IDENTITY; i++) {
        const r = await login(proxy, "alice", PASSWORD);
        if (r.ok) held.push(r.client);
      }
      expect(held).toHaveLength(PER_IDENTITY);
      const refused = await Promise.all(Array.from({ length: BURST }, () => login(proxy, "alice", PASSWORD)));
      expect(refused.map((r) => (r.ok ? "connected" : r.code))).toEqual(Array(BURST).fill("53300"));
      // Still full: the refusals did not release someone else's slot.
      const still = await login(proxy, "alice", PASSWORD);
      expect(still.ok ? "connected" : still.code).toBe("53300");
      if (still.ok) await still.client.end();
      await Promise.all(held.map((c) => c.end()));
      await sleep(50);
      await countsAreBack();
    });

    it("a mixed burst of every phase at once, twice: the counts come back", async () => {
      const all = Object.values(phases);
      for (let round = 0; round < 2; round++) {
        const ws = await Promise.all(
          Array.from({ length: all.length * 2 }, () => WireClient.open(proxy.port)),
        );
        try {
          await Promise.all(ws.map((w, i) => all[i % all.length]!()(w)));
        } finally {
          for (const w of ws) w.close();
        }
      }
      await countsAreBack();
    }, 15_000);
  });
}

describe("session counts when the upstream login stalls or the session is ended by a deadline", () => {
  let proxy: TestProxy;
  let tap: Awaited<ReturnType<typeof tcpTap>>;
  let stall = false;
  const held: Socket[] = [];
  beforeAll(async () => {
    const info = postgresInfo();
    tap = await tcpTap({
      intercept: (s) => {
        if (!stall) return false;
        // A PostgreSQL that accepts and never answers the startup packet.
        held.push(s);
        return true;
      },
    });
    proxy = await startProxy(
      {
        upstream: { host: "127.0.0.1", port: tap.port, user: info.appRole, password: info.rolePassword },
        access: { grants: [{ identity: "alice", databases: ["*"], role: info.appRole }] },
        auth: { timeoutMs: 800 },
        sessions: { maxPerIdentity: 1, maxPerSource: 1, idleTimeoutMs: 400, maxLifetimeMs: 0 },
        limits: { maxClientConnections: 16, lingerMs: 200 },
        pool: { mode: "session", size: 4, serverConnectTimeoutMs: 5000 },
        log: { level: "warn" },
      },
      new Map([["alice", verifier(PASSWORD)]]),
    );
  });
  afterAll(async () => {
    await proxy?.close();
    for (const s of held) s.destroy();
    await tap?.close();
  });

  const oneGetsIn = async () => {
    expect(await eventually(() => proxy.server.sessions.size === 0, 3000)).toBe(true);
    const r = await login(proxy, "alice", PASSWORD);
    expect(r.ok, `refused: ${!r.ok && r.message}`).toBe(true);
    if (r.ok) {
      const second = await login(proxy, "alice", PASSWORD);
      expect(second.ok ? "connected" : second.code).toBe("53300");
      await r.client.end();
    }
  };

  it("clients timed out (08006) while PostgreSQL never answers the login give their leases back", async () => {
    stall = true;
    try {
      const results = await Promise.all(Array.from({ length: 4 }, () => login(proxy, "alice", PASSWORD)));
      // One holds the lease and times out; the others are refused by the limit meanwhile.
      const codes = results.map((r) => (r.ok ? "connected" : r.code));
      expect(codes.filter((c) => c === "08006").length).toBeGreaterThanOrEqual(1);
      expect(
        codes.every((c) => c === "08006" || c === "53300"),
        codes.join(),
      ).toBe(true);
    } finally {
      stall = false;
    }
    await oneGetsIn();
  });

  it("clients that vanish while PostgreSQL never answers the login give their leases back", async () => {
    stall = true;
    try {
      const ws = await Promise.all(Array.from({ length: 3 }, () => WireClient.open(proxy.port)));
      await Promise.all(ws.map((w) => vanishAt("sasl-final", "postgres")(w)));
      await sleep(150);
    } finally {
      stall = false;
    }
    await oneGetsIn();
  });

  it("a session ended by the idle timeout gives its lease back", async () => {
    const r = await login(proxy, "alice", PASSWORD);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const ended = new Promise<string | undefined>((resolve) =>
      r.client.on("error", (e) => resolve((e as { code?: string }).code)),
    );
    expect(await Promise.race([ended, sleep(2000).then(() => "still open")])).toBe("57P05");
    await r.client.end().catch(() => {});
    await oneGetsIn();
  });
});
