import { describe, expect, it } from "vitest";
import { sleep } from "../support/hostile.ts";
import { pooledClients } from "../support/pooledClients.ts";

/**
 * Transaction mode, pinning `pin`, one server connection: a client that pins its backend with
 * session state and then leaves (Terminate, or a dropped socket) must not hand that state to the
 * next client. pgwarden gives the connection back to the pool as it is, because it is at
 * ReadyForQuery `I` with nothing owed; a correct pooler closes it (or DISCARD ALLs it) first.
 */

const CASES: { name: string; start: string; probe: string }[] = [
  {
    name: "a session advisory lock",
    start: "SELECT pg_advisory_lock(4711)",
    probe: "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 4711",
  },
  {
    name: "a LISTEN registration",
    start: "LISTEN hostile_channel",
    probe:
      "SELECT count(*)::text FROM pg_listening_channels() WHERE pg_listening_channels = 'hostile_channel'",
  },
  {
    name: "a temporary table",
    start: "CREATE TEMP TABLE hostile_tmp AS SELECT 'left behind'::text AS v",
    probe:
      "SELECT count(*)::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname = 'hostile_tmp'",
  },
  {
    name: "a WITH HOLD cursor",
    start: "DECLARE hostile_cur CURSOR WITH HOLD FOR SELECT 1",
    probe: "SELECT count(*)::text FROM pg_cursors WHERE name = 'hostile_cur'",
  },
  {
    name: "an SQL prepared statement",
    start: "PREPARE hostile_prep AS SELECT 'left behind'",
    probe: "SELECT count(*)::text FROM pg_prepared_statements WHERE name = 'hostile_prep'",
  },
];

describe("state a pinned client leaves behind (transaction mode)", () => {
  const session = pooledClients(
    "hpinleft",
    {
      pool: { mode: "transaction", size: 1, pinning: { onSessionState: "pin" } },
    },
    "perTest",
  );

  for (const c of CASES)
    for (const leave of ["terminate", "vanish"] as const) {
      it(`${c.name}, then the client leaves (${leave}): the next client does not inherit it`, async () => {
        const hostile = await session();
        const started = await hostile.query(c.start);
        expect(started.error).toBeUndefined();
        expect(await hostile.value(c.probe)).toBe("1");
        if (leave === "terminate") hostile.terminate();
        else hostile.vanish();
        await hostile.wire.waitClosed(3000).catch(() => {});
        await sleep(100);
        const next = await session();
        // On its own connection, as PostgreSQL gives every new session, the state is not there.
        expect(await next.value(c.probe)).toBe("0");
        next.terminate();
        await next.wire.waitClosed(3000).catch(() => {});
      });
    }
});
