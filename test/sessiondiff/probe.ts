import { expect } from "vitest";
import { exchange, msg, simple, traceOf } from "../pooldiff/harness.ts";
import { PROBE } from "../pooldiff/program.ts";
import type { PgSession } from "../support/pgSession.ts";

/**
 * Session state a new session must not have: prepared statements, temporary objects, locks,
 * LISTEN, cursors. pgwarden's own shared statements (PGW_…, docs/pooling.md) are not the client's.
 */
export const LEFTOVERS =
  "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE name NOT LIKE 'PGW\\_%')::text AS prepared," +
  " (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::text AS temp," +
  " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::text AS locks," +
  " (SELECT count(*) FROM pg_listening_channels())::text AS listening," +
  " (SELECT count(*) FROM pg_cursors)::text AS cursors";

/** The ParameterStatus messages of the login, sorted. */
export const startupStatus = (s: PgSession): string[] =>
  traceOf(s.wire.messages(0)).filter((t) => t.startsWith("S:") && !t.startsWith("S:session_authorization="));

/**
 * What a new client sees of its session before it changes anything: the startup reports, the
 * unnamed statement (none), settings, leftovers and lastval(). Run on a fresh direct connection it
 * is the reference.
 */
export const freshLook = async (s: PgSession, o: { lastval: boolean }) => ({
  startup: startupStatus(s),
  unnamed: await exchange(s, [msg.bind(""), msg.execute(), msg.sync()]),
  settings: await simple(s, PROBE),
  leftovers: await simple(s, LEFTOVERS),
  ...(o.lastval ? { lastval: await simple(s, "SELECT lastval()") } : {}),
});

/** Ends sessions politely and waits until the other side has closed them. */
export const leave = async (sessions: readonly PgSession[]) => {
  for (const s of sessions) s.terminate();
  await Promise.all(sessions.map((s) => s.wire.waitClosed(3000).catch(() => {})));
};

export const expectFresh = async (pooled: PgSession, reference: unknown, o: { lastval: boolean }) =>
  expect(await freshLook(pooled, o)).toEqual(reference);
