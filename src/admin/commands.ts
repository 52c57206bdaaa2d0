import {
  encodeCommandComplete,
  encodeDataRow,
  encodeEmptyQueryResponse,
  encodeError,
  encodeNoticeFields,
  encodeReadyForQuery,
  encodeRowDescription,
  type FieldDescription,
} from "../protocol/backend.ts";
import type {
  AdminSource,
  ClientRow,
  ConfigRow,
  ConnectionRow,
  Count,
  DatabaseRow,
  PoolRow,
  ServerRow,
  StatsCounters,
  StatsRow,
} from "./snapshot.ts";

/**
 * The admin console's answers, as complete backend messages ending in ReadyForQuery. Column
 * names, order and types are PgBouncer 1.24/1.25's, so tools written for its console read ours.
 */

/** PostgreSQL's syntax_error: PgBouncer sends 08P01 here, which clients take for a broken connection. */
export const ADMIN_SYNTAX_ERROR = "42601";
/** Longest piece of an unknown command echoed back in the error. */
const ECHO_LIMIT = 200;

const ready = (): Buffer => encodeReadyForQuery("I");
const show = (): Buffer => encodeCommandComplete("SHOW");

type ColumnType = "text" | "int4" | "numeric";
// OID and typlen for each type, as PgBouncer declares them.
const typeInfo: Record<ColumnType, { oid: number; size: number }> = {
  text: { oid: 25, size: -1 },
  int4: { oid: 23, size: 4 },
  numeric: { oid: 1700, size: -1 },
};

interface Column<R> {
  readonly name: string;
  readonly type: ColumnType;
  readonly value: (row: R) => string | null;
}

const INT4_MIN = -(2 ** 31);
const INT4_MAX = 2 ** 31 - 1;

/** An int4 as text: truncated and clamped to the type's range; NaN (a source bug) shows as 0. */
const int4Text = (n: number): string =>
  Number.isNaN(n) ? "0" : String(Math.min(INT4_MAX, Math.max(INT4_MIN, Math.trunc(n))));

/** An unsigned 64-bit counter as numeric text: exact for bigint, never in exponent notation. */
const countText = (c: Count): string => {
  if (typeof c === "bigint") return (c < 0n ? 0n : c).toString();
  return Number.isFinite(c) && c > 0 ? BigInt(Math.trunc(c)).toString() : "0";
};

const pad2 = (n: number): string => String(n).padStart(2, "0");

/** PgBouncer's timestamp text ("2024-05-01 12:00:00 UTC"), always in UTC here. */
const timestampText = (d: Date): string | null => {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) return null;
  return (
    `${String(d.getUTCFullYear()).padStart(4, "0")}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ` +
    `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} UTC`
  );
};

const optionalText = (s: string | undefined): string | null => (s === undefined ? null : String(s));
const bit = (b: boolean): number => (b ? 1 : 0);
/** The wait split PgBouncer shows: whole seconds, then the microseconds left over. */
const wholeSeconds = (us: number): number => Math.floor(us / 1_000_000);
const restMicros = (us: number): number => Math.trunc(us) % 1_000_000;

const text = <R>(name: string, value: (r: R) => string | null): Column<R> => ({ name, type: "text", value });
const int4 = <R>(name: string, value: (r: R) => number): Column<R> => ({
  name,
  type: "int4",
  value: (r) => int4Text(value(r)),
});
const numeric = <R>(name: string, value: (r: R) => Count): Column<R> => ({
  name,
  type: "numeric",
  value: (r) => countText(value(r)),
});

const poolColumns: readonly Column<PoolRow>[] = [
  text("database", (r) => r.database),
  text("user", (r) => r.user),
  int4("cl_active", (r) => r.clActive),
  int4("cl_waiting", (r) => r.clWaiting),
  int4("cl_active_cancel_req", (r) => r.clActiveCancelReq),
  int4("cl_waiting_cancel_req", (r) => r.clWaitingCancelReq),
  int4("sv_active", (r) => r.svActive),
  int4("sv_active_cancel", (r) => r.svActiveCancel),
  int4("sv_being_canceled", (r) => r.svBeingCanceled),
  int4("sv_idle", (r) => r.svIdle),
  int4("sv_used", (r) => r.svUsed),
  int4("sv_tested", (r) => r.svTested),
  int4("sv_login", (r) => r.svLogin),
  int4("maxwait", (r) => wholeSeconds(r.maxWaitUs)),
  int4("maxwait_us", (r) => restMicros(r.maxWaitUs)),
  text("pool_mode", (r) => r.poolMode),
  text("load_balance_hosts", (r) => optionalText(r.loadBalanceHosts)),
];

/** `ptr` and `link` are pointers in PgBouncer; here the connection id in the same hex form. */
const hexId = (id: number): string => `0x${Math.max(0, Math.trunc(id)).toString(16)}`;

const connectionColumns = <R extends ConnectionRow & { readonly state: string }>(
  type: "C" | "S",
): readonly Column<R>[] => [
  text("type", () => type),
  text("user", (r) => r.user),
  text("database", (r) => r.database),
  text("replication", (r) => r.replication),
  text("state", (r) => (r.state === "active" && r.link === undefined ? "idle" : r.state)),
  text("addr", (r) => r.addr),
  int4("port", (r) => r.port),
  text("local_addr", (r) => r.localAddr),
  int4("local_port", (r) => r.localPort),
  text("connect_time", (r) => timestampText(r.connectTime)),
  text("request_time", (r) => timestampText(r.requestTime)),
  int4("wait", (r) => wholeSeconds(r.waitUs)),
  int4("wait_us", (r) => restMicros(r.waitUs)),
  int4("close_needed", (r) => bit(r.closeNeeded)),
  text("ptr", (r) => hexId(r.id)),
  text("link", (r) => (r.link === undefined ? "" : hexId(r.link))),
  int4("remote_pid", (r) => r.remotePid),
  text("tls", (r) => r.tls),
  text("application_name", (r) => printableName(r.applicationName)),
  int4("prepared_statements", (r) => r.preparedStatements),
  int4("id", (r) => r.id),
];
const clientColumns = connectionColumns<ClientRow>("C");
const serverColumns = connectionColumns<ServerRow>("S");

type CounterKey = keyof StatsCounters;
/** Each counter's column name in SHOW STATS (totals, averages), STATS_TOTALS and STATS_AVERAGES. */
const counterNames: readonly [CounterKey, string, string, string, string][] = [
  [
    "serverAssignmentCount",
    "total_server_assignment_count",
    "avg_server_assignment_count",
    "server_assignment_count",
    "server_assignment_count",
  ],
  ["xactCount", "total_xact_count", "avg_xact_count", "xact_count", "xact_count"],
  ["queryCount", "total_query_count", "avg_query_count", "query_count", "query_count"],
  ["bytesReceived", "total_received", "avg_recv", "bytes_received", "bytes_received"],
  ["bytesSent", "total_sent", "avg_sent", "bytes_sent", "bytes_sent"],
  ["xactTimeUs", "total_xact_time", "avg_xact_time", "xact_time", "xact_time"],
  ["queryTimeUs", "total_query_time", "avg_query_time", "query_time", "query_time"],
  ["waitTimeUs", "total_wait_time", "avg_wait_time", "wait_time", "wait_time"],
  [
    "clientParseCount",
    "total_client_parse_count",
    "avg_client_parse_count",
    "client_parse_count",
    "avg_client_parse_count",
  ],
  [
    "serverParseCount",
    "total_server_parse_count",
    "avg_server_parse_count",
    "server_parse_count",
    "avg_server_parse_count",
  ],
  ["bindCount", "total_bind_count", "avg_bind_count", "bind_count", "avg_bind_count"],
];

const statsDatabase = text<StatsRow>("database", (r) => r.database);
const counterColumns = (which: "total" | "average", nameAt: 1 | 2 | 3 | 4): Column<StatsRow>[] =>
  counterNames.map((names) => numeric<StatsRow>(names[nameAt], (r) => r[which][names[0]]));

const statsColumns: readonly Column<StatsRow>[] = [
  statsDatabase,
  ...counterColumns("total", 1),
  ...counterColumns("average", 2),
];
const statsTotalsColumns: readonly Column<StatsRow>[] = [statsDatabase, ...counterColumns("total", 3)];
const statsAveragesColumns: readonly Column<StatsRow>[] = [statsDatabase, ...counterColumns("average", 4)];

const databaseColumns: readonly Column<DatabaseRow>[] = [
  text("name", (r) => r.name),
  text("host", (r) => optionalText(r.host)),
  int4("port", (r) => r.port),
  text("database", (r) => r.database),
  text("force_user", (r) => optionalText(r.forceUser)),
  int4("pool_size", (r) => r.poolSize),
  int4("min_pool_size", (r) => r.minPoolSize),
  int4("reserve_pool_size", (r) => r.reservePoolSize),
  int4("server_lifetime", (r) => r.serverLifetime),
  text("pool_mode", (r) => optionalText(r.poolMode)),
  text("load_balance_hosts", (r) => optionalText(r.loadBalanceHosts)),
  int4("max_connections", (r) => r.maxConnections),
  int4("current_connections", (r) => r.currentConnections),
  int4("max_client_connections", (r) => r.maxClientConnections),
  int4("current_client_connections", (r) => r.currentClientConnections),
  int4("paused", (r) => bit(r.paused)),
  int4("disabled", (r) => bit(r.disabled)),
];

interface ListRow {
  readonly list: string;
  readonly items: number;
}
const listColumns: readonly Column<ListRow>[] = [text("list", (r) => r.list), int4("items", (r) => r.items)];
const listRows = (s: AdminSource): ListRow[] => {
  const l = s.lists();
  return [
    { list: "databases", items: l.databases },
    { list: "users", items: l.users },
    { list: "peers", items: l.peers },
    { list: "pools", items: l.pools },
    { list: "peer_pools", items: l.peerPools },
    { list: "free_clients", items: l.freeClients },
    { list: "used_clients", items: l.usedClients },
    { list: "login_clients", items: l.loginClients },
    { list: "free_servers", items: l.freeServers },
    { list: "used_servers", items: l.usedServers },
    { list: "dns_names", items: l.dnsNames },
    { list: "dns_zones", items: l.dnsZones },
    { list: "dns_queries", items: l.dnsQueries },
    { list: "dns_pending", items: l.dnsPending },
  ];
};

const configColumns: readonly Column<ConfigRow>[] = [
  text("key", (r) => r.key),
  text("value", (r) => r.value),
  text("default", (r) => r.default),
  text("changeable", (r) => (r.changeable ? "yes" : "no")),
];

const versionColumns: readonly Column<string>[] = [text("version", (v) => v)];

/** A SHOW answer: its columns, and the messages it sends for the source's current rows. */
interface Table {
  readonly fields: readonly FieldDescription[];
  readonly render: (s: AdminSource) => Buffer[];
}

const fieldsOf = (columns: readonly { name: string; type: ColumnType }[]): FieldDescription[] =>
  columns.map((c) => ({
    name: c.name,
    tableOid: 0,
    columnAttr: 0,
    typeOid: typeInfo[c.type].oid,
    typeSize: typeInfo[c.type].size,
    typeModifier: -1,
    format: 0,
  }));

const table = <R>(columns: readonly Column<R>[], rows: (s: AdminSource) => Iterable<R>): Table => {
  const fields = fieldsOf(columns);
  const description = encodeRowDescription(fields);
  return {
    fields,
    render: (source) => {
      const out = [description];
      for (const row of rows(source)) out.push(encodeDataRow(columns.map((c) => c.value(row))));
      out.push(show(), ready());
      return out;
    },
  };
};

const tables = {
  pools: table(poolColumns, (s) => s.pools()),
  clients: table(clientColumns, (s) => s.clients()),
  servers: table(serverColumns, (s) => s.servers()),
  stats: table(statsColumns, (s) => s.stats()),
  stats_totals: table(statsTotalsColumns, (s) => s.stats()),
  stats_averages: table(statsAveragesColumns, (s) => s.stats()),
  databases: table(databaseColumns, (s) => s.databases()),
  lists: table(listColumns, listRows),
  config: table(configColumns, (s) => s.config()),
  version: table(versionColumns, (s) => [`pgwarden ${s.version}`]),
} as const;

export type ShowTarget = keyof typeof tables;
export const showTargets = Object.keys(tables) as ShowTarget[];

/** Column names and types of each SHOW answer, for documentation and tests. */
export const showFields = (what: ShowTarget): readonly FieldDescription[] => tables[what].fields;

export type AdminQuery =
  | { readonly kind: "show"; readonly what: ShowTarget }
  | { readonly kind: "help" }
  | { readonly kind: "empty" }
  | { readonly kind: "invalid"; readonly text: string };

// PgBouncer's whitespace: blanks, tabs and line breaks (String.trim would take more).
const BLANKS = /[ \t\n\r]+/;
const OUTER_BLANKS = /^[ \t\n\r]+|[ \t\n\r]+$/g;
const TRAILING_SEMICOLON = /;[ \t\n\r]*$/;

const isShowTarget = (w: string): w is ShowTarget => Object.hasOwn(tables, w);

/** Reads `SHOW <what>` in any case, with blanks around and one optional trailing semicolon. */
export const parseAdminQuery = (sql: string): AdminQuery => {
  const body = sql.replace(TRAILING_SEMICOLON, "").replace(OUTER_BLANKS, "");
  if (body === "") return { kind: "empty" };
  const words = body.split(BLANKS);
  if (words.length === 2 && words[0]!.toLowerCase() === "show") {
    const what = words[1]!.toLowerCase();
    if (what === "help") return { kind: "help" };
    if (isShowTarget(what)) return { kind: "show", what };
  }
  return { kind: "invalid", text: sql };
};

const HELP =
  "\n\tSHOW HELP|POOLS|CLIENTS|SERVERS|DATABASES|LISTS|CONFIG|VERSION" +
  "\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES";

/**
 * A client-chosen name as PostgreSQL shows it (pg_clean_ascii): bytes outside printable ASCII
 * become `\xNN`, so no escape sequence reaches the operator's terminal, and at most 63 bytes
 * (NAMEDATALEN - 1) are kept, never half an escape.
 */
export const printableName = (name: string): string => {
  let out = "";
  for (const b of Buffer.from(name, "utf8")) {
    const part = b >= 32 && b <= 126 ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
    if (out.length + part.length > 63) break;
    out += part;
  }
  return out;
};

/** At most ECHO_LIMIT UTF-16 units, never half a surrogate pair (its lone half would become U+FFFD). */
const echo = (s: string): string => {
  if (s.length <= ECHO_LIMIT) return s;
  const last = s.charCodeAt(ECHO_LIMIT - 1);
  const cut = last >= 0xd800 && last <= 0xdbff ? ECHO_LIMIT - 1 : ECHO_LIMIT;
  return `${s.slice(0, cut)}...`;
};

/**
 * Answers one parsed command. Reading the source may fail (it is the pools' code): that becomes
 * an ERROR for this command, reported to `onSourceFailure`, and the session carries on.
 */
export const respond = (
  query: AdminQuery,
  source: AdminSource,
  onSourceFailure?: (cause: unknown) => void,
): Buffer[] => {
  switch (query.kind) {
    case "empty":
      return [encodeEmptyQueryResponse(), ready()];
    case "invalid":
      return [
        encodeError({
          severity: "ERROR",
          code: ADMIN_SYNTAX_ERROR,
          message: `invalid command '${echo(query.text)}', use SHOW HELP;`,
        }),
        ready(),
      ];
    case "help":
      return [
        encodeNoticeFields(
          new Map([
            ["S", "NOTICE"],
            ["V", "NOTICE"],
            ["C", "00000"],
            ["M", "Console usage"],
            ["D", HELP],
          ]),
        ),
        show(),
        ready(),
      ];
    case "show":
      try {
        return tables[query.what].render(source);
      } catch (cause) {
        try {
          onSourceFailure?.(cause);
        } catch {
          // A failing reporter must not take the answer down with it.
        }
        return [
          encodeError({
            severity: "ERROR",
            code: "XX000",
            message: `could not read the state for SHOW ${query.what.toUpperCase()}`,
          }),
          ready(),
        ];
      }
  }
};

/** The whole answer to a simple Query on the admin console, ReadyForQuery included. */
export const answerAdminQuery = (
  sql: string,
  source: AdminSource,
  onSourceFailure?: (cause: unknown) => void,
): Buffer[] => respond(parseAdminQuery(sql), source, onSourceFailure);
