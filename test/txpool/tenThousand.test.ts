import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { holdIdleClients, type IdleClients } from "../support/idleSockets.ts";
import { postgresInfo } from "../support/postgres.ts";
import { runClient } from "../support/run.ts";
import {
  backends,
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  superuserIn,
  targetMissing,
} from "./target.ts";

/**
 * SLOW (about a minute): 10,000 idle clients held at once over 20 server connections while
 * pgbench runs through the same pool with zero failed transactions. A process may hold 20,000
 * open files here, so the pooler runs as its own process and this worker holds the client sockets.
 */

const IDLE = 10_000;
const SIZE = 20;
const skip = targetMissing();

describe.skipIf(skip !== undefined)(
  `[slow] ${IDLE} idle clients over ${SIZE} server connections (${skip ?? "running"})`,
  () => {
    let fixture: Fixture;
    let target: PooledTarget;
    let idle: IdleClients | undefined;

    beforeAll(async () => {
      fixture = await createFixture("tenk");
      const info = postgresInfo();
      const init = await runClient(
        "pgbench",
        ["-i", "-q", "-s", "1", "-h", info.host, "-p", String(info.port), "-U", info.user, fixture.database],
        { env: { PGPASSWORD: info.password } },
      );
      expect(init.code, init.stderr).toBe(0);
      const db = await superuserIn(fixture.database);
      await db.query(`GRANT ALL ON ALL TABLES IN SCHEMA public TO ${fixture.roles[0]}`);
      await db.end();
      target = await startTarget(fixture, {
        pool: { mode: "transaction", size: SIZE },
        maxClientConnections: IDLE + 500,
        asProcess: true,
      });
    }, 120_000);

    afterAll(async () => {
      await idle?.close();
      await target?.stop();
    }, 120_000);

    it("holds them all while pgbench runs, and every one still answers afterwards", async () => {
      idle = await holdIdleClients({
        port: target.port,
        user: fixture.roles[0],
        database: fixture.database,
        count: IDLE,
      });
      expect(idle.failures.slice(0, 5)).toEqual([]);
      expect(idle.clients.length).toBe(IDLE);
      console.log(`${IDLE} clients logged in through ${target.kind} in ${idle.seconds.toFixed(2)} s`);

      let most = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          most = Math.max(
            most,
            (await backends(fixture)).filter((b) => b.usename === fixture.roles[0]).length,
          );
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const c = target.connection();
      const run = await runClient(
        "pgbench",
        [
          "-n",
          "-S",
          "-c",
          String(SIZE),
          "-j",
          "2",
          "-T",
          "10",
          "-h",
          c.host,
          "-p",
          String(c.port),
          "-U",
          c.user,
          c.database,
        ],
        { env: { PGPASSWORD: c.password }, timeoutMs: 120_000 },
      );
      sampling = false;
      await sampler;
      expect(run.stderr).not.toMatch(/error|abort|FATAL/i);
      expect(run.code).toBe(0);
      expect(run.stdout).toMatch(/^number of failed transactions: 0 \(0\.000%\)$/m);
      expect(most).toBeLessThanOrEqual(SIZE);

      // Nobody was dropped or sent anything while idle.
      expect(idle.clients.filter((x) => x.closed).length).toBe(0);
      expect(idle.clients.filter((x) => x.unexpected > 0).length).toBe(0);
      // A spread of them still runs queries.
      for (let i = 0; i < IDLE; i += IDLE / 20) expect(await idle.probe(i, "SELECT 1")).toBe("T D C Z");
    }, 600_000);
  },
);
