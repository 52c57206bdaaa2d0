import { fc, test } from "@fast-check/vitest";
import { describe, expect, it, vi } from "vitest";
import {
  ADMIN_SYNTAX_ERROR,
  answerAdminQuery,
  parseAdminQuery,
  showFields,
  showTargets,
} from "../../src/admin/commands.ts";
import type { AdminSource, ClientRow, PoolRow, StatsCounters } from "../../src/admin/snapshot.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { decodeDataRow, decodeFields, decodeRowDescription } from "../../src/protocol/backend.ts";
import type { WireMessage } from "../support/wire.ts";
import { client, idleClient, pool, sampleSource, split } from "./fixtures.ts";

const ok = <A>(v: A): Exclude<A, { _tag: "PgwardenError" }> => {
  if (isPgwardenError(v)) throw new Error(v.message);
  return v as Exclude<A, { _tag: "PgwardenError" }>;
};

/** Column names, then each row as text (null for NULL), of a SHOW answer. */
const table = (out: readonly Buffer[]) => {
  const msgs = split(out);
  expect(msgs.map((m) => m.type).slice(-2)).toEqual(["C", "Z"]);
  const fields = ok(decodeRowDescription(msgs[0]!.msg));
  const rows = msgs
    .filter((m) => m.type === "D")
    .map((m) => ok(decodeDataRow(m.msg)).map((v) => (v === null ? null : v.toString("utf8"))));
  return { names: fields.map((f) => f.name), fields, rows };
};
const record = (out: readonly Buffer[], i = 0): Record<string, string | null> => {
  const t = table(out);
  return Object.fromEntries(t.names.map((n, j) => [n, t.rows[i]![j]!]));
};
const fieldsOfError = (m: WireMessage) => ok(decodeFields(m.msg));

const TEXT = 25;
const INT4 = 23;
const NUMERIC = 1700;

describe("column layout (PgBouncer 1.24/1.25)", () => {
  // Names and order straight from PgBouncer's admin.c and stats.c at 1.25.2.
  const expected: Record<string, string[]> = {
    pools: [
      "database",
      "user",
      "cl_active",
      "cl_waiting",
      "cl_active_cancel_req",
      "cl_waiting_cancel_req",
      "sv_active",
      "sv_active_cancel",
      "sv_being_canceled",
      "sv_idle",
      "sv_used",
      "sv_tested",
      "sv_login",
      "maxwait",
      "maxwait_us",
      "pool_mode",
      "load_balance_hosts",
    ],
    clients: [
      "type",
      "user",
      "database",
      "replication",
      "state",
      "addr",
      "port",
      "local_addr",
      "local_port",
      "connect_time",
      "request_time",
      "wait",
      "wait_us",
      "close_needed",
      "ptr",
      "link",
      "remote_pid",
      "tls",
      "application_name",
      "prepared_statements",
      "id",
    ],
    stats: [
      "database",
      "total_server_assignment_count",
      "total_xact_count",
      "total_query_count",
      "total_received",
      "total_sent",
      "total_xact_time",
      "total_query_time",
      "total_wait_time",
      "total_client_parse_count",
      "total_server_parse_count",
      "total_bind_count",
      "avg_server_assignment_count",
      "avg_xact_count",
      "avg_query_count",
      "avg_recv",
      "avg_sent",
      "avg_xact_time",
      "avg_query_time",
      "avg_wait_time",
      "avg_client_parse_count",
      "avg_server_parse_count",
      "avg_bind_count",
    ],
    stats_averages: [
      "database",
      "server_assignment_count",
      "xact_count",
      "query_count",
      "bytes_received",
      "bytes_sent",
      "xact_time",
      "query_time",
      "wait_time",
      "avg_client_parse_count",
      "avg_server_parse_count",
      "avg_bind_count",
    ],
    databases: [
      "name",
      "host",
      "port",
      "database",
      "force_user",
      "pool_size",
      "min_pool_size",
      "reserve_pool_size",
      "server_lifetime",
      "pool_mode",
      "load_balance_hosts",
      "max_connections",
      "current_connections",
      "max_client_connections",
      "current_client_connections",
      "paused",
      "disabled",
    ],
    lists: ["list", "items"],
    config: ["key", "value", "default", "changeable"],
    version: ["version"],
  };
  expected.servers = expected.clients!;

  it.each(Object.keys(expected))("SHOW %s has PgBouncer's columns in its order", (what) => {
    expect(showFields(what as never).map((f) => f.name)).toEqual(expected[what]);
  });

  it("declares PgBouncer's types: int4 counts, numeric stats, text times", () => {
    const type = (what: string, name: string) => showFields(what as never).find((f) => f.name === name);
    expect(type("pools", "cl_active")).toMatchObject({ typeOid: INT4, typeSize: 4, typeModifier: -1 });
    expect(type("pools", "pool_mode")).toMatchObject({ typeOid: TEXT, typeSize: -1 });
    expect(type("stats", "total_received")).toMatchObject({ typeOid: NUMERIC, typeSize: -1 });
    expect(type("clients", "connect_time")).toMatchObject({ typeOid: TEXT });
    expect(type("clients", "close_needed")).toMatchObject({ typeOid: INT4 });
    expect(type("databases", "paused")).toMatchObject({ typeOid: INT4 });
    for (const what of showTargets)
      for (const f of showFields(what)) expect([f.tableOid, f.columnAttr, f.format]).toEqual([0, 0, 0]);
  });
});

describe("parsing", () => {
  it.each(["SHOW POOLS", "show pools", "Show Pools;", "  \n\tshow\t pools \r\n ; \n", "SHOW POOLS ;"])(
    "accepts %j",
    (sql) => {
      expect(parseAdminQuery(sql)).toEqual({ kind: "show", what: "pools" });
    },
  );

  it.each([
    "SHOW",
    "SHOW POOLS EXTRA",
    "SHOW POOLS;;",
    "SHOW POOLS; SHOW STATS",
    "SELECT 1",
    "SHOW\u00a0POOLS",
    "SHOW constructor",
    "SHOW __proto__",
  ])("refuses %j", (sql) => {
    expect(parseAdminQuery(sql)).toEqual({ kind: "invalid", text: sql });
  });

  it("treats blanks and a lone semicolon as an empty query", () => {
    for (const sql of ["", "   ", ";", " ; \n"]) expect(parseAdminQuery(sql)).toEqual({ kind: "empty" });
  });
});

describe("answers", () => {
  const source = sampleSource();

  it("SHOW POOLS splits the wait into seconds and microseconds and shows a missing value as NULL", () => {
    expect(record(answerAdminQuery("SHOW POOLS", source))).toMatchObject({
      database: "app",
      user: "app_rw",
      cl_active: "3",
      cl_waiting: "1",
      sv_being_canceled: "1",
      sv_login: "1",
      maxwait: "2",
      maxwait_us: "500123",
      pool_mode: "transaction",
      load_balance_hosts: null,
    });
  });

  it("SHOW CLIENTS shows links in hex, an unlinked active client as idle, times in UTC", () => {
    const out = answerAdminQuery("show clients", source);
    expect(record(out, 0)).toEqual({
      type: "C",
      user: "alice",
      database: "app",
      replication: "none",
      state: "active",
      addr: "127.0.0.1",
      port: "50000",
      local_addr: "127.0.0.1",
      local_port: "6432",
      connect_time: "2024-05-01 12:00:05 UTC",
      request_time: "2024-05-01 12:00:07 UTC",
      wait: "1",
      wait_us: "42",
      close_needed: "0",
      ptr: "0x7",
      link: "0xff",
      remote_pid: "0",
      tls: "TLSv1.3/TLS_AES_256_GCM_SHA384",
      application_name: "psql",
      prepared_statements: "2",
      id: "7",
    });
    expect(record(out, 1)).toMatchObject({ state: "idle", link: "", ptr: "0x8", tls: "" });
    expect(idleClient.state).toBe("active");
  });

  it("SHOW SERVERS marks rows S and carries the backend pid", () => {
    expect(record(answerAdminQuery("SHOW SERVERS", source))).toMatchObject({
      type: "S",
      state: "active",
      link: "0x7",
      remote_pid: "4242",
      close_needed: "1",
    });
  });

  it("SHOW STATS keeps 64-bit totals exact", () => {
    const r = record(answerAdminQuery("SHOW STATS", source));
    expect(r.total_received).toBe("13000000000000");
    expect(r.total_bind_count).toBe("20000000000000");
    expect(r.avg_recv).toBe("13");
    expect(r.avg_wait_time).toBe("17");
    expect(record(answerAdminQuery("SHOW STATS_TOTALS", source))).toMatchObject({
      bytes_sent: "14000000000000",
    });
    expect(record(answerAdminQuery("SHOW STATS_AVERAGES", source))).toMatchObject({
      bytes_sent: "14",
      avg_bind_count: "20",
    });
  });

  it("SHOW DATABASES, LISTS, CONFIG and VERSION", () => {
    expect(record(answerAdminQuery("SHOW DATABASES", source))).toMatchObject({
      name: "app",
      database: "app_prod",
      force_user: null,
      pool_mode: null,
      reserve_pool_size: "5",
      paused: "0",
      disabled: "1",
    });
    const lists = table(answerAdminQuery("SHOW LISTS", source)).rows;
    expect(lists.map((r) => r[0])).toEqual([
      "databases",
      "users",
      "peers",
      "pools",
      "peer_pools",
      "free_clients",
      "used_clients",
      "login_clients",
      "free_servers",
      "used_servers",
      "dns_names",
      "dns_zones",
      "dns_queries",
      "dns_pending",
    ]);
    expect(lists[1]).toEqual(["users", "2"]);
    expect(table(answerAdminQuery("SHOW CONFIG", source)).rows).toEqual([
      ["max_client_conn", "10000", "100", "yes"],
      ["listen_port", "6432", "6432", "no"],
    ]);
    expect(table(answerAdminQuery("SHOW VERSION", source)).rows).toEqual([["pgwarden 0.1.0"]]);
  });

  it("an unknown command is an ERROR with PgBouncer's wording, then ReadyForQuery", () => {
    const msgs = split(answerAdminQuery("DROP TABLE x", source));
    expect(msgs.map((m) => m.type)).toEqual(["E", "Z"]);
    const f = fieldsOfError(msgs[0]!);
    expect(f.get("S")).toBe("ERROR");
    expect(f.get("C")).toBe(ADMIN_SYNTAX_ERROR);
    expect(f.get("M")).toBe("invalid command 'DROP TABLE x', use SHOW HELP;");
    expect(msgs[1]!.msg.subarray(5).toString()).toBe("I");
  });

  it("echoes at most 200 characters of an unknown command", () => {
    const f = fieldsOfError(split(answerAdminQuery("x".repeat(10_000), source))[0]!);
    expect(f.get("M")).toBe(`invalid command '${"x".repeat(200)}...', use SHOW HELP;`);
  });

  it("SHOW HELP is a notice listing the commands", () => {
    const msgs = split(answerAdminQuery("show help;", source));
    expect(msgs.map((m) => m.type)).toEqual(["N", "C", "Z"]);
    const f = fieldsOfError(msgs[0]!);
    expect(f.get("M")).toBe("Console usage");
    for (const what of showTargets) expect(f.get("D")).toContain(what.toUpperCase());
  });

  it("an empty query gets EmptyQueryResponse like PostgreSQL", () => {
    expect(split(answerAdminQuery("  ", source)).map((m) => m.type)).toEqual(["I", "Z"]);
  });

  it("a source that throws gives an XX000 error for that command and reports the cause", () => {
    const boom = new Error("pool map corrupted");
    const onFailure = vi.fn();
    const broken = sampleSource({
      pools: () => {
        throw boom;
      },
    });
    const msgs = split(answerAdminQuery("SHOW POOLS", broken, onFailure));
    expect(msgs.map((m) => m.type)).toEqual(["E", "Z"]);
    expect(fieldsOfError(msgs[0]!).get("C")).toBe("XX000");
    expect(onFailure).toHaveBeenCalledWith(boom);
    const reporterThrows = () => {
      throw new Error("logger down");
    };
    expect(split(answerAdminQuery("SHOW POOLS", broken, reporterThrows)).map((m) => m.type)).toEqual([
      "E",
      "Z",
    ]);
  });
});

/** The shape every answer must have: whole messages, one outcome, then ReadyForQuery idle. */
const checkAnswer = (out: readonly Buffer[]) => {
  const msgs = split(out);
  const types = msgs.map((m) => m.type);
  expect(types.at(-1)).toBe("Z");
  expect(msgs.at(-1)!.msg.subarray(5).toString()).toBe("I");
  expect(["C", "E", "I"]).toContain(types.at(-2));
  expect(types.filter((t) => t === "Z")).toHaveLength(1);
  if (types[0] === "T") {
    const width = ok(decodeRowDescription(msgs[0]!.msg)).length;
    for (const m of msgs.slice(1, -2)) {
      expect(m.type).toBe("D");
      expect(ok(decodeDataRow(m.msg))).toHaveLength(width);
    }
  } else expect(types.length).toBeLessThanOrEqual(3);
};

const queryText = fc.oneof(
  fc.string({ unit: "binary", maxLength: 300 }),
  fc
    .tuple(
      fc.constantFrom("", " ", "\t\n", "\u00a0"),
      fc.constantFrom("show", "SHOW", "ShOw", "select", ""),
      fc.constantFrom(" ", "  ", "\r\n", ""),
      fc.constantFrom(...showTargets, "help", "HELP", "users", "fds", "", "pools pools"),
      fc.constantFrom("", ";", " ; ", ";;", "; show stats"),
    )
    .map((parts) => parts.join("")),
);

const weirdNumber = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -1, 2 ** 53 + 1, 1e300),
);
const weirdCount = fc.oneof(weirdNumber, fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }));
const weirdDate = fc.oneof(fc.date(), fc.constant(new Date(Number.NaN)));

const poolRow: fc.Arbitrary<PoolRow> = fc.record({
  ...Object.fromEntries(Object.keys(pool).map((k) => [k, weirdNumber])),
  database: fc.string(),
  user: fc.string(),
  poolMode: fc.constantFrom("session", "transaction", "statement"),
  loadBalanceHosts: fc.option(fc.string(), { nil: undefined }),
}) as fc.Arbitrary<PoolRow>;

const clientRow: fc.Arbitrary<ClientRow> = fc.record({
  ...Object.fromEntries(Object.entries(client).map(([k, v]) => [k, fc.constant(v)])),
  user: fc.string({ unit: "binary" }),
  port: weirdNumber,
  connectTime: weirdDate,
  requestTime: weirdDate,
  waitUs: weirdNumber,
  id: weirdNumber,
  link: fc.option(weirdNumber, { nil: undefined }),
  state: fc.constantFrom("active", "idle", "waiting", "active_cancel_req", "waiting_cancel_req"),
  closeNeeded: fc.boolean(),
  applicationName: fc.string({ unit: "binary" }),
}) as unknown as fc.Arbitrary<ClientRow>;

const counters = fc.record(
  Object.fromEntries(
    [
      "serverAssignmentCount",
      "xactCount",
      "queryCount",
      "bytesReceived",
      "bytesSent",
      "xactTimeUs",
      "queryTimeUs",
      "waitTimeUs",
      "clientParseCount",
      "serverParseCount",
      "bindCount",
    ].map((k) => [k, weirdCount]),
  ),
) as unknown as fc.Arbitrary<StatsCounters>;

const source: fc.Arbitrary<AdminSource> = fc
  .record({
    pools: fc.array(poolRow, { maxLength: 3 }),
    clients: fc.array(clientRow, { maxLength: 3 }),
    stats: fc.array(fc.record({ database: fc.string(), total: counters, average: counters }), {
      maxLength: 2,
    }),
    fails: fc.constantFrom("none", "pools", "clients", "stats", "lists"),
    version: fc.string(),
  })
  .map(({ pools, clients, stats, fails, version }) => {
    const base = sampleSource({
      pools: () => pools,
      clients: () => clients,
      stats: () => stats,
      version,
    });
    if (fails === "none") return base;
    return {
      ...base,
      [fails]: () => {
        throw new Error("source failure");
      },
    };
  });

describe("any input", () => {
  test.prop([queryText, source], { numRuns: 400 })(
    "never throws and always answers with one outcome and ReadyForQuery",
    (sql, src) => {
      checkAnswer(answerAdminQuery(sql, src));
    },
  );
});
