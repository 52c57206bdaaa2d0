import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { eventually, sleep } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * The pool-level counts, read the way an operator reads them (the admin console's SHOW POOLS and
 * SHOW CLIENTS) and enforced by pool.maxClientsPerPool, after clients vanish at awkward moments:
 * while queued for the only server connection (session mode: at login; transaction mode: at their
 * first query), right after ReadyForQuery, in the middle of a transaction that holds the server,
 * and after a startup setting PostgreSQL refuses once a transaction-mode client first needs a
 * server. Afterwards cl_active, cl_waiting, maxwait and the client list must be empty, and the
 * pool must admit exactly maxClientsPerPool clients again. PgBouncer removes a client from its
 * pool's lists (and from cl_waiting) whenever it disconnects, at any phase.
 */

const PER_POOL = 3;
const database = () => postgresInfo().appDatabase;

const rawClient = async (proxy: TestProxy, user = "app", params: [string, string][] = []) => {
  const w = await WireClient.open(proxy.port);
  w.send(
    encodeStartup(
      new Map([["user", user], ["database", user === "ops" ? "pgwarden" : database()], ...params]),
    ),
  );
  return w;
};
const readies = (w: WireClient) => w.messages().filter((m) => m.type === "Z").length;

/** Rows of an admin console SHOW command, as objects. */
const show = async (proxy: TestProxy, what: string): Promise<Record<string, string | number | null>[]> => {
  const c = new pg.Client({ host: "127.0.0.1", port: proxy.port, user: "ops", database: "pgwarden" });
  await c.connect();
  try {
    return (await c.query(`SHOW ${what}`)).rows as Record<string, string | number | null>[];
  } finally {
    await c.end();
  }
};

const appClient = async (proxy: TestProxy) => {
  const c = new pg.Client({ host: "127.0.0.1", port: proxy.port, user: "app", database: database() });
  c.on("error", () => {});
  try {
    await c.connect();
    await c.query("SELECT 1");
    return { ok: true as const, c };
  } catch (e) {
    await c.end().catch(() => {});
    return { ok: false as const, code: (e as { code?: string }).code };
  }
};

for (const mode of ["session", "transaction"] as const) {
  describe(`pool counts after vanishing clients (${mode} mode, one server connection)`, () => {
    let proxy: TestProxy;
    beforeAll(async () => {
      const info = postgresInfo();
      proxy = await startProxy({
        upstream: { user: info.appRole, password: info.rolePassword },
        auth: { method: "trust" },
        admin: { identities: ["ops"] },
        access: { grants: [{ identity: "app", databases: ["*"], role: info.appRole }] },
        limits: { maxClientConnections: 32, lingerMs: 200 },
        pool: { mode, size: 1, maxClientsPerPool: PER_POOL, queryWaitTimeoutMs: 0 },
        sessions: { idleTimeoutMs: 0 },
        log: { level: "warn" },
      });
    });
    afterAll(() => proxy?.close());

    const countsAreBack = async () => {
      expect(
        await eventually(() => proxy.server.sessions.size === 0, 3000),
        `client connections left: ${proxy.server.sessions.size}`,
      ).toBe(true);
      const pools = (await show(proxy, "POOLS")).filter((p) => p.database === database());
      for (const p of pools) {
        expect(Number(p.cl_active), "cl_active").toBe(0);
        expect(Number(p.cl_waiting), "cl_waiting").toBe(0);
        expect(Number(p.maxwait), "maxwait").toBe(0);
        expect(Number(p.maxwait_us), "maxwait_us").toBe(0);
        expect(Number(p.sv_active), "sv_active").toBe(0);
      }
      expect((await show(proxy, "CLIENTS")).filter((c) => c.database === database())).toEqual([]);
      // maxClientsPerPool admits exactly PER_POOL again. In session mode with one server the
      // others would wait, so there only one is taken and checked for a server.
      const got: pg.Client[] = [];
      try {
        if (mode === "session") {
          const one = await appClient(proxy);
          expect(one.ok, `refused: ${!one.ok && one.code}`).toBe(true);
          if (one.ok) got.push(one.c);
        } else {
          for (let i = 0; i < PER_POOL; i++) {
            const r = await appClient(proxy);
            expect(r.ok, `client ${i + 1} of ${PER_POOL} refused: ${!r.ok && r.code}`).toBe(true);
            if (r.ok) got.push(r.c);
          }
          const over = await appClient(proxy);
          expect(over.ok ? "connected" : over.code).toBe("53300");
          if (over.ok) got.push(over.c);
        }
      } finally {
        await Promise.all(got.map((c) => c.end().catch(() => {})));
      }
    };

    it("clients queued behind a held server vanish: nobody is left waiting", async () => {
      const holder = await rawClient(proxy);
      await holder.until((x) => readies(x) === 1, 5000, "holder ready");
      holder.send(encodeQuery("BEGIN"));
      await holder.until((x) => readies(x) === 2, 5000, "BEGIN");
      const queued = await Promise.all(Array.from({ length: PER_POOL - 1 }, () => rawClient(proxy)));
      if (mode === "transaction") {
        await Promise.all(queued.map((q) => q.until((x) => readies(x) === 1, 5000, "ready")));
        for (const q of queued) q.send(encodeQuery("SELECT 1"));
      }
      await sleep(200);
      const pool = (await show(proxy, "POOLS")).find((p) => p.database === database())!;
      expect(Number(pool.cl_waiting)).toBe(PER_POOL - 1);
      for (const q of queued) q.close();
      await sleep(100);
      const after = (await show(proxy, "POOLS")).find((p) => p.database === database())!;
      expect(Number(after.cl_waiting), "vanished clients still counted as waiting").toBe(0);
      holder.send(encodeQuery("COMMIT"));
      await holder.until((x) => readies(x) === 3, 5000, "COMMIT");
      holder.close();
      await countsAreBack();
    });

    it("clients that vanish inside a transaction, or right after ReadyForQuery, in a burst", async () => {
      const ws = await Promise.all(Array.from({ length: PER_POOL }, () => rawClient(proxy)));
      // Session mode: one gets the server, the others stay queued at login.
      await ws[0]!.until((x) => readies(x) === 1, 5000, "first ready");
      await Promise.race([
        Promise.all(
          ws.map((w) => w.until((x) => readies(x) === 1 || x.closed, 2000, "ready").catch(() => {})),
        ),
        sleep(300),
      ]);
      ws[0]!.send(encodeQuery("BEGIN; SELECT pg_sleep(0.2)"));
      await sleep(50);
      for (const w of ws) w.close();
      await countsAreBack();
    });

    if (mode === "transaction")
      it("a startup setting PostgreSQL refuses at the first server assignment costs nothing", async () => {
        const w = await rawClient(proxy, "app", [["DateStyle", "no such style"]]);
        await w.until((x) => readies(x) === 1 || x.closed || x.errorCode() !== undefined, 5000, "login");
        if (!w.closed && w.errorCode() === undefined) {
          w.send(encodeQuery("SELECT 1"));
          await w.until((x) => x.closed || x.errorCode() !== undefined, 5000, "an error");
        }
        // PostgreSQL refuses such a login with 22023; the client must hear an error either way.
        expect(w.errorCode()).toBeDefined();
        w.close();
        await countsAreBack();
      });
  });
}
