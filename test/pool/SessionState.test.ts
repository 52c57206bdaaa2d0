import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { replaySql, SessionState } from "../../src/pool/SessionState.ts";
import type { TransactionStatus } from "../../src/protocol/backend.ts";
import { loadSqlParser, type SqlParser } from "../../src/sql/parser.ts";
import { classifySessionEffects } from "../../src/sql/sessionEffects.ts";
import { directClient } from "../support/postgres.ts";

/**
 * A connection whose session state is tracked the way the relay will: effects queued per query,
 * then fed CommandComplete, ErrorResponse, ParameterStatus and ReadyForQuery as they arrive.
 */
interface Tracked {
  readonly client: pg.Client;
  readonly state: SessionState;
  run(sql: string): Promise<void>;
}

let parser: SqlParser;
const open: pg.Client[] = [];

const tracked = async (): Promise<Tracked> => {
  const client = await directClient();
  open.push(client);
  const state = new SessionState();
  // biome-ignore lint/suspicious/noExplicitAny: pg's Connection is an untyped EventEmitter.
  const conn = (client as any).connection as NodeJS.EventEmitter;
  conn.on("commandComplete", () => state.onCommandComplete());
  conn.on("errorMessage", () => state.onError());
  conn.on("parameterStatus", (m: { parameterName: string; parameterValue: string }) =>
    state.onParameterStatus(m.parameterName, m.parameterValue),
  );
  conn.on("readyForQuery", (m: { status: string }) => state.onReadyForQuery(m.status as TransactionStatus));
  // Listening starts after startup: both sides of each test begin from the same login defaults.
  return {
    client,
    state,
    run: async (sql) => {
      const effects = classifySessionEffects(parser, sql);
      if (!effects.ok) throw new Error(effects.error.message);
      state.queue(effects.value);
      await client.query(sql).catch(() => undefined);
    },
  };
};

/** Every setting as the session sees it, the ones pg_settings lists and our custom ones. */
const settingsOf = async (c: pg.Client): Promise<Record<string, string>> => {
  const r = await c.query<{ name: string; setting: string }>(
    `SELECT name, current_setting(name) AS setting FROM pg_settings
     UNION ALL SELECT n, coalesce(current_setting(n, true), '<unset>')
       FROM unnest(ARRAY['myapp.tenant', 'myapp.list', 'myapp.unused']) AS n`,
  );
  return Object.fromEntries(r.rows.map((row) => [row.name, row.setting]));
};

beforeAll(async () => {
  parser = await loadSqlParser();
});
afterAll(async () => {
  await Promise.all(open.map((c) => c.end()));
});

const SETS = [
  `set search_path to a, "B"`,
  "SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE",
  `SET "Work_Mem" = '64MB'; set statement_timeout = 5000`,
  "set datestyle = 'German, DMY'; SET IntervalStyle TO iso_8601",
  "SET application_name = E'a\\\\b''c'",
  "set myapp.tenant = 'x''y'",
  `SELECT set_config('myapp.list', 'a, "q"', false)`,
  "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
  "set extra_float_digits = -3; set random_page_cost = 1.5; set enable_seqscan = off",
  // Nothing below may survive.
  "BEGIN; SET LOCAL lock_timeout = 1000; SET enable_hashjoin = off; ROLLBACK",
  "BEGIN; SET geqo = off; SAVEPOINT s; SET enable_sort = off; ROLLBACK TO s; COMMIT",
  "SET enable_material = off; SELECT 1/0",
  "BEGIN; SET enable_nestloop = off; SELECT 1/0",
  "ROLLBACK",
];

describe("SessionState against PostgreSQL", () => {
  it("replays a client's settings so a fresh server connection ends up identical", async () => {
    const a = await tracked();
    for (const sql of SETS) await a.run(sql);
    // The tracking must have kept exactly the committed settings.
    expect(a.state.settings.get("geqo")).toEqual({ form: "sql", text: "'off'" });
    for (const gone of [
      "lock_timeout",
      "enable_hashjoin",
      "enable_sort",
      "enable_material",
      "enable_nestloop",
    ]) {
      expect(a.state.settings.has(gone)).toBe(false);
    }

    const b = await tracked();
    const before = await settingsOf(b.client);
    const replay = replaySql(a.state.settings, b.state.settings);
    // TimeZone is reported, so the server's own rendering of the interval replaced the SET text.
    expect(replay).toContain("set_config('timezone', '<-08>+08', false)");
    expect(replay).toContain(`SET "myapp.tenant" TO 'x''y'`);
    await b.client.query(replay);
    const [want, got] = await Promise.all([settingsOf(a.client), settingsOf(b.client)]);
    expect(got).toEqual(want);
    // The comparison is not vacuous: these differed before the replay.
    expect(before.search_path).not.toEqual(want.search_path);
    expect(got.search_path).toBe('a, "B"');
    expect(got["myapp.list"]).toBe('a, "q"');
    expect(got.application_name).toBe("a\\b'c");
    expect(got.default_transaction_isolation).toBe("serializable");
  });

  it("returns a used server connection to the defaults a fresh client expects", async () => {
    const used = await tracked();
    for (const sql of SETS) await used.run(sql);
    const fresh = await tracked();
    const replay = replaySql(fresh.state.settings, used.state.settings);
    expect(replay).toMatch(/^RESET /);
    await used.client.query(replay);
    const [want, got] = await Promise.all([settingsOf(fresh.client), settingsOf(used.client)]);
    // PostgreSQL keeps a custom placeholder once defined: RESET leaves '' where a fresh session has none.
    expect({ ...got, "myapp.tenant": "<unset>", "myapp.list": "<unset>" }).toEqual(want);
    expect([got["myapp.tenant"], got["myapp.list"]]).toEqual(["", ""]);
  });

  it("says nothing to replay when the states agree", async () => {
    const a = await tracked();
    await a.run("set work_mem = '8MB'");
    expect(replaySql(a.state.settings, a.state.settings)).toBe("");
  });

  it("takes reported values over SET text, including after a rolled-back SET", async () => {
    const a = await tracked();
    await a.run("BEGIN; SET application_name = 'inside'");
    expect(a.state.settings.get("application_name")).toEqual({ form: "raw", text: "inside" });
    await a.run("ROLLBACK");
    expect(a.state.settings.get("application_name")?.text).not.toBe("inside");
  });
});

describe("SessionState pins", () => {
  const fed = (sqls: readonly string[]): SessionState => {
    const s = new SessionState();
    for (const sql of sqls) {
      const e = classifySessionEffects(parser, sql);
      if (!e.ok) throw new Error(e.error.message);
      s.queue(e.value);
      for (const _ of e.value) s.onCommandComplete();
      s.onReadyForQuery("I");
    }
    return s;
  };

  it("pins on LISTEN and releases on UNLISTEN *", () => {
    expect([...fed(["LISTEN a"]).pins]).toEqual(["listen"]);
    expect(fed(["LISTEN a", "UNLISTEN *"]).pinned).toBe(false);
    expect(fed(["LISTEN a", "UNLISTEN a"]).pinned).toBe(true);
  });

  it("DISCARD ALL clears settings and every pin but LOAD", () => {
    const s = fed([
      "SET work_mem = '1MB'",
      "LISTEN a",
      "CREATE TEMP TABLE t (a int)",
      "LOAD 'plpgsql'",
      "DISCARD ALL",
    ]);
    expect(s.settings.size).toBe(0);
    expect([...s.pins]).toEqual(["load"]);
  });

  it("keeps startup parameters as raw values, without read-only ones", () => {
    const s = SessionState.fromStartup({
      application_name: "app",
      DateStyle: "ISO, DMY",
      server_version: "18",
    });
    expect([...s.settings.keys()].sort()).toEqual(["application_name", "datestyle"]);
    expect(replaySql(s.settings, new Map())).toBe(
      "SELECT pg_catalog.set_config('application_name', 'app', false), pg_catalog.set_config('datestyle', 'ISO, DMY', false)",
    );
  });
});

describe("replaySql", () => {
  it("renders SET TIME ZONE for interval values and quotes names and literals", () => {
    const client = new Map([
      ["timezone", { form: "sql", text: "INTERVAL '-08:00' HOUR TO MINUTE" }] as const,
      ['we"ird.name', { form: "raw", text: "it's \\ here" }] as const,
    ]);
    expect(replaySql(client, new Map([["work_mem", { form: "sql", text: "'1MB'" }]]))).toBe(
      `RESET "work_mem"; SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE; ` +
        String.raw`SELECT pg_catalog.set_config('we"ird.name', E'it''s \\ here', false)`,
    );
  });
});
