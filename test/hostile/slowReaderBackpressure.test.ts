import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { encodeQuery } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { boundary, type ServeChild, serveChild, sleep, writeServeFiles } from "../support/hostile.ts";
import { directClient, postgresInfo } from "../support/postgres.ts";
import { WireClient } from "../support/wire.ts";

/**
 * A client that asks for a large result and then reads nothing (or one read a second): the
 * proxy must hold PostgreSQL back (TCP backpressure) instead of queueing the result in memory,
 * keep the session (PostgreSQL itself would wait), and cancel the query once the client leaves.
 */

const MiB = 1024 * 1024;
/** About 1 GB of rows if nothing held PostgreSQL back. */
const BIG = "SELECT repeat('x', 1000) AS pad, 'hostile-slow-reader' AS tag FROM generate_series(1, 1000000)";

const backendsRunning = async (): Promise<number> => {
  const c = await directClient();
  try {
    const r = await c.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%hostile-slow-reader%' AND pid <> pg_backend_pid()",
    );
    return (r.rows[0] as { n: number }).n;
  } finally {
    await c.end();
  }
};

for (const mode of ["session", "transaction"] as const) {
  describe(`a client that stops reading a large result (pgwarden serve, ${mode} mode)`, () => {
    let serve: ServeChild | undefined;
    beforeAll(async () => {
      const pg = postgresInfo();
      const port = await freePort();
      const files = await writeServeFiles({
        ...boundary(),
        listen: { host: "127.0.0.1", port },
        upstream: { host: pg.host, port: pg.port, user: pg.appRole, password: pg.rolePassword },
        auth: { method: "trust" },
        pool: { mode, size: 2 },
        log: { level: "warn" },
      });
      serve = await serveChild(files.config, port);
    });
    afterAll(() => serve?.kill());

    it("keeps RSS growth under 48 MiB while the client reads nothing, then one read a second; cancels on leave", async () => {
      const s = serve!;
      const c = await WireClient.open(s.port);
      try {
        c.send(
          encodeStartup(
            new Map([
              ["user", "alice"],
              ["database", postgresInfo().appDatabase],
            ]),
          ),
        );
        await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
        await sleep(200);
        const baseline = s.rss();
        let peak = baseline;
        const sampler = setInterval(() => {
          peak = Math.max(peak, s.rss());
        }, 25);
        c.socket.pause();
        c.send(encodeQuery(BIG));
        await sleep(4000);
        // One read a second, as a trickling reader takes it.
        const before = c.received.length;
        for (let i = 0; i < 3; i++) {
          c.socket.resume();
          await new Promise<void>((r) => c.socket.once("data", () => r()));
          c.socket.pause();
          await sleep(1000);
        }
        clearInterval(sampler);
        peak = Math.max(peak, s.rss());
        const grew = (peak - baseline) / MiB;
        expect(grew, `RSS grew by ${grew.toFixed(0)} MiB`).toBeLessThan(48);
        expect(c.closed, "the proxy dropped a slow but live reader").toBe(false);
        expect(c.received.length).toBeGreaterThan(before);
        expect(await backendsRunning(), "PostgreSQL is not producing the result").toBe(1);
      } finally {
        c.close();
      }
      // The client left mid-result: PostgreSQL must stop working for nobody.
      const deadline = Date.now() + 5000;
      while ((await backendsRunning()) > 0 && Date.now() < deadline) await sleep(100);
      expect(await backendsRunning()).toBe(0);
      expect(s.child.exitCode).toBe(null);
    }, 25_000);
  });
}
