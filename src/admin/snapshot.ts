/**
 * What the admin console shows, as plain rows the pools hand over on demand. Fields are named after
 * PgBouncer's columns (camelCase) and use its units, so the console can answer with its layout.
 */

export type PoolMode = "session" | "transaction" | "statement";

/** An exact integer count: bigint where a number could outgrow 2^53 (byte and µs totals). */
export type Count = number | bigint;

/** One row of SHOW POOLS: a pool keyed by (database, upstream role). */
export interface PoolRow {
  /** Database name as clients ask for it. */
  readonly database: string;
  /** Upstream role the pool's server connections log in as. */
  readonly user: string;
  /** Clients linked to a server connection, or idle with nothing to run. */
  readonly clActive: number;
  /** Clients that sent a query and wait for a server connection. */
  readonly clWaiting: number;
  /** Clients whose cancel request has been forwarded and awaits PostgreSQL's answer. */
  readonly clActiveCancelReq: number;
  /** Clients whose cancel request has not been forwarded yet. */
  readonly clWaitingCancelReq: number;
  /** Server connections linked to a client. */
  readonly svActive: number;
  /** Server connections carrying a cancel request to PostgreSQL. */
  readonly svActiveCancel: number;
  /** Server connections held back from the pool until a cancel aimed at them completes. */
  readonly svBeingCanceled: number;
  /** Server connections idle and ready for a client. */
  readonly svIdle: number;
  /** Server connections idle long enough to need a liveness check before reuse. */
  readonly svUsed: number;
  /** Server connections running the reset or check query. */
  readonly svTested: number;
  /** Server connections still logging in to PostgreSQL. */
  readonly svLogin: number;
  /** How long the oldest waiting client has waited, µs (shown as maxwait s + maxwait_us). */
  readonly maxWaitUs: number;
  /** The pool's effective mode. */
  readonly poolMode: PoolMode;
  /** load_balance_hosts of a database with several hosts; undefined shows NULL. */
  readonly loadBalanceHosts?: string | undefined;
}

/** Client states as SHOW CLIENTS prints them; "active" with no server linked shows as "idle". */
export type ClientState = "active" | "idle" | "waiting" | "active_cancel_req" | "waiting_cancel_req";
/** Server states as SHOW SERVERS prints them ("new" is logging in); unlinked "active" shows as "idle". */
export type ServerState = "active" | "idle" | "used" | "tested" | "new" | "active_cancel" | "being_canceled";

/** What SHOW CLIENTS and SHOW SERVERS have in common: one connection, either leg. */
export interface ConnectionRow {
  /** Client: the identity it logged in as; server: the upstream role. */
  readonly user: string;
  /** Database name as clients ask for it (the pool's key, not necessarily PostgreSQL's name). */
  readonly database: string;
  /** Replication kind the connection asked for. */
  readonly replication: "none" | "logical" | "physical";
  /** Peer address ("unix" for a Unix socket). */
  readonly addr: string;
  /** Peer port (0 for a Unix socket). */
  readonly port: number;
  /** Our end's address. */
  readonly localAddr: string;
  /** Our end's port. */
  readonly localPort: number;
  /** When the connection was made. */
  readonly connectTime: Date;
  /** When it last sent a request (client) or was last handed a request (server). */
  readonly requestTime: Date;
  /** How long the current wait for a server connection has lasted, µs (shown as wait s + wait_us). */
  readonly waitUs: number;
  /** Whether it will be closed once its current work finishes (reconnect, lifetime). */
  readonly closeNeeded: boolean;
  /** Unique across clients and servers; shown as `id` and, in hex, as `ptr`. */
  readonly id: number;
  /** id of the connection on the other leg it is linked to, if any (shown as `link`, in hex). */
  readonly link?: number | undefined;
  /** Server: PostgreSQL backend PID; client: 0 (the client's PID is not known). */
  readonly remotePid: number;
  /** TLS summary like "TLSv1.3/TLS_AES_256_GCM_SHA384", or "" on plaintext. */
  readonly tls: string;
  /** application_name the client set ("" if none); for a server, that of the linked client. */
  readonly applicationName: string;
  /** Protocol prepared statements it holds: client names, or statements prepared on the server. */
  readonly preparedStatements: number;
}

export interface ClientRow extends ConnectionRow {
  readonly state: ClientState;
}

export interface ServerRow extends ConnectionRow {
  readonly state: ServerState;
}

/** The counters SHOW STATS reports, once as totals since start and once as recent averages. */
export interface StatsCounters {
  /** Times a server connection was assigned to a client. */
  readonly serverAssignmentCount: Count;
  /** SQL transactions run (statement mode: statements). */
  readonly xactCount: Count;
  /** SQL queries run. */
  readonly queryCount: Count;
  /** Bytes received from clients. */
  readonly bytesReceived: Count;
  /** Bytes sent to clients. */
  readonly bytesSent: Count;
  /** µs spent linked to a server in a transaction, idle in transaction included. */
  readonly xactTimeUs: Count;
  /** µs spent linked to a server running queries. */
  readonly queryTimeUs: Count;
  /** µs clients spent waiting for a server connection. */
  readonly waitTimeUs: Count;
  /** Parse messages received from clients. */
  readonly clientParseCount: Count;
  /** Parse messages sent to PostgreSQL (statements prepared on a server). */
  readonly serverParseCount: Count;
  /** Bind messages received from clients. */
  readonly bindCount: Count;
}

/**
 * One row of SHOW STATS, per database. `average` is over the last stats period, as PgBouncer
 * computes it: counts and bytes per second; xactTimeUs, queryTimeUs and waitTimeUs per
 * transaction, query and server assignment respectively.
 */
export interface StatsRow {
  readonly database: string;
  readonly total: StatsCounters;
  readonly average: StatsCounters;
}

/** One row of SHOW DATABASES: a database clients may ask for. */
export interface DatabaseRow {
  /** Name clients ask for. */
  readonly name: string;
  /** Upstream host; undefined (NULL) for a Unix socket. */
  readonly host?: string | undefined;
  /** Upstream port. */
  readonly port: number;
  /** Database name on PostgreSQL. */
  readonly database: string;
  /** Role forced for every client of this database, if any. */
  readonly forceUser?: string | undefined;
  /** Server connections per pool. */
  readonly poolSize: number;
  /** Idle server connections kept open per pool. */
  readonly minPoolSize: number;
  /** Extra server connections allowed after a client has waited. */
  readonly reservePoolSize: number;
  /** Seconds a server connection lives before it is closed when idle. */
  readonly serverLifetime: number;
  /** A per-database mode override; undefined (NULL) when the global mode applies. */
  readonly poolMode?: PoolMode | undefined;
  /** load_balance_hosts of a database with several hosts; undefined shows NULL. */
  readonly loadBalanceHosts?: string | undefined;
  /** Most server connections for this database across its pools (0: unlimited). */
  readonly maxConnections: number;
  /** Server connections for this database now. */
  readonly currentConnections: number;
  /** Most client connections for this database (0: unlimited). */
  readonly maxClientConnections: number;
  /** Client connections for this database now. */
  readonly currentClientConnections: number;
  /** Whether new queries are held (PAUSE). */
  readonly paused: boolean;
  /** Whether new clients are refused (DISABLE). */
  readonly disabled: boolean;
}

/** SHOW LISTS: sizes of internal lists, in PgBouncer's row order. */
export interface ListCounts {
  /** Databases configured. */
  readonly databases: number;
  /** Identities known. */
  readonly users: number;
  /** Peer instances configured for cancel forwarding. */
  readonly peers: number;
  /** Pools. */
  readonly pools: number;
  /** Pools towards peers. */
  readonly peerPools: number;
  /** Client slots allocated but unused (0 where nothing is pre-allocated). */
  readonly freeClients: number;
  /** Client connections. */
  readonly usedClients: number;
  /** Clients still logging in. */
  readonly loginClients: number;
  /** Server slots allocated but unused. */
  readonly freeServers: number;
  /** Server connections. */
  readonly usedServers: number;
  /** Host names in the DNS cache. */
  readonly dnsNames: number;
  /** DNS zones in the cache. */
  readonly dnsZones: number;
  /** DNS queries in flight. */
  readonly dnsQueries: number;
  /** DNS queries waiting to be sent. */
  readonly dnsPending: number;
}

/** One row of SHOW CONFIG. */
export interface ConfigRow {
  /** Setting name. */
  readonly key: string;
  /** Value in force. */
  readonly value: string;
  /** Value when not configured. */
  readonly default: string;
  /** Whether a reload can change it without a restart. */
  readonly changeable: boolean;
}

/** What the pools implement for the console: read on every command, so each answer is current. */
export interface AdminSource {
  pools(): readonly PoolRow[];
  clients(): readonly ClientRow[];
  servers(): readonly ServerRow[];
  stats(): readonly StatsRow[];
  databases(): readonly DatabaseRow[];
  lists(): ListCounts;
  config(): readonly ConfigRow[];
  /** pgwarden's version number, e.g. "0.1.0". */
  readonly version: string;
}
