import type {
  AdminSource,
  ClientRow,
  ConfigRow,
  DatabaseRow,
  PoolRow,
  ServerRow,
  StatsCounters,
  StatsRow,
} from "../admin/snapshot.ts";
import { emptyStats, type Pool, type ServerPool } from "../pool/ServerPool.ts";
import type { ClientConnection } from "./ClientConnection.ts";
import type { PgwardenConfig } from "./config.ts";
import type { ServerConnection } from "./ServerConnection.ts";

/** Connection ids are `c…`/`s…` in base 36; the console shows them as numbers, servers apart from clients. */
const numericId = (id: string): number => {
  const n = Number.parseInt(id.slice(1), 36);
  return id.startsWith("s") ? n * 2 + 1 : n * 2;
};

const serverState = (pool: Pool, s: ServerConnection, now: number): ServerRow["state"] => {
  if (s.cancelsInFlight > 0) return pool.active.has(s) ? "active_cancel" : "being_canceled";
  if (pool.active.has(s)) return "active";
  const m = s.machine.state;
  if (m === "resetting" || m === "active") return "tested";
  if (m === "connecting" || m === "authenticating") return "new";
  return now - s.idleSince >= pool.settings.serverCheckDelayMs ? "used" : "idle";
};

const zeroCounters: StatsCounters = {
  serverAssignmentCount: 0,
  xactCount: 0,
  queryCount: 0,
  bytesReceived: 0,
  bytesSent: 0,
  xactTimeUs: 0,
  queryTimeUs: 0,
  waitTimeUs: 0,
  clientParseCount: 0,
  serverParseCount: 0,
  bindCount: 0,
};

/**
 * The admin console's view of the running proxy: read on every command from the pools and the
 * live client connections, so each answer is current and nothing is kept on the side.
 */
export const adminSource = (
  pools: ServerPool,
  sessions: ReadonlyMap<string, ClientConnection>,
  config: () => PgwardenConfig,
  version: string,
): AdminSource => {
  const startedAt = Date.now();
  const clientsOf = () => {
    const out: { conn: ClientConnection; view: NonNullable<ClientConnection["poolView"]> }[] = [];
    for (const conn of sessions.values()) {
      const view = conn.poolView;
      if (view !== undefined) out.push({ conn, view });
    }
    return out;
  };
  return {
    version,
    pools(): readonly PoolRow[] {
      const now = Date.now();
      const clients = clientsOf();
      return pools.all().map((p) => {
        let clActive = 0;
        let clWaiting = 0;
        let maxWait = 0;
        for (const { view } of clients) {
          if (view.pool !== p) continue;
          if (view.state === "waiting") {
            clWaiting++;
            maxWait = Math.max(maxWait, now - view.waitingSince);
          } else clActive++;
        }
        const states = [...p.servers].map((s) => serverState(p, s, now));
        const count = (st: ServerRow["state"]) => states.filter((x) => x === st).length;
        return {
          database: p.database,
          user: p.role,
          clActive,
          clWaiting,
          clActiveCancelReq: 0,
          clWaitingCancelReq: 0,
          svActive: count("active") + count("active_cancel"),
          svActiveCancel: count("active_cancel"),
          svBeingCanceled: count("being_canceled"),
          svIdle: count("idle"),
          svUsed: count("used"),
          svTested: count("tested"),
          svLogin: p.loginCount,
          maxWaitUs: maxWait * 1000,
          poolMode: p.settings.mode,
        };
      });
    },
    clients(): readonly ClientRow[] {
      const now = Date.now();
      return clientsOf().map(({ conn, view }) => ({
        user: conn.user ?? "",
        database: view.pool.database,
        replication: "none",
        addr: view.remote.addr,
        port: view.remote.port,
        localAddr: view.remote.localAddr,
        localPort: view.remote.localPort,
        connectTime: new Date(view.openedAt),
        requestTime: new Date(view.requestedAt),
        waitUs: view.state === "waiting" ? (now - view.waitingSince) * 1000 : 0,
        closeNeeded: false,
        id: numericId(conn.id),
        link: view.server === undefined ? undefined : numericId(view.server.id),
        remotePid: 0,
        tls: conn.tls === undefined ? "" : `${conn.tls.protocol}/${conn.tls.cipher}`,
        applicationName: view.applicationName,
        preparedStatements: 0,
        state: view.state,
      }));
    },
    servers(): readonly ServerRow[] {
      const now = Date.now();
      const linked = new Map<ServerConnection, ClientConnection>();
      for (const { conn, view } of clientsOf()) if (view.server !== undefined) linked.set(view.server, conn);
      const rows: ServerRow[] = [];
      for (const p of pools.all()) {
        for (const s of p.servers) {
          const sock = s.socket;
          const client = linked.get(s);
          rows.push({
            user: p.role,
            database: p.database,
            replication: "none",
            addr: sock?.remoteAddress ?? "",
            port: sock?.remotePort ?? 0,
            localAddr: sock?.localAddress ?? "",
            localPort: sock?.localPort ?? 0,
            connectTime: new Date(s.createdAt),
            requestTime: new Date(Math.max(s.idleSince, s.createdAt)),
            waitUs: 0,
            closeNeeded: false,
            id: numericId(s.id),
            link: client === undefined ? undefined : numericId(client.id),
            remotePid: s.pid ?? 0,
            tls: s.tlsProtocol ?? "",
            applicationName: s.reported.get("application_name") ?? "",
            preparedStatements: p.statements?.preparedOn(s.id).length ?? 0,
            state: serverState(p, s, now),
          });
        }
      }
      return rows;
    },
    stats(): readonly StatsRow[] {
      const seconds = Math.max(1, (Date.now() - startedAt) / 1000);
      const byDb = new Map<string, Pool["stats"]>();
      for (const p of pools.all()) {
        const t = byDb.get(p.database) ?? emptyStats();
        for (const k of Object.keys(t) as (keyof Pool["stats"])[]) t[k] += p.stats[k];
        byDb.set(p.database, t);
      }
      return [...byDb].map(([database, t]) => ({
        database,
        total: {
          ...zeroCounters,
          serverAssignmentCount: t.assignments,
          xactCount: t.transactions,
          queryCount: t.queries,
          bytesReceived: t.received,
          bytesSent: t.sent,
          waitTimeUs: t.waitUs,
        },
        // Averages since start: counts per second, wait per assignment.
        average: {
          ...zeroCounters,
          serverAssignmentCount: Math.round(t.assignments / seconds),
          xactCount: Math.round(t.transactions / seconds),
          queryCount: Math.round(t.queries / seconds),
          bytesReceived: Math.round(t.received / seconds),
          bytesSent: Math.round(t.sent / seconds),
          waitTimeUs: t.assignments === 0 ? 0 : Math.round(t.waitUs / t.assignments),
        },
      }));
    },
    databases(): readonly DatabaseRow[] {
      const c = config();
      const seen = new Map<string, DatabaseRow>();
      for (const p of pools.all()) {
        const prev = seen.get(p.database);
        const clients = p.clients + (prev?.currentClientConnections ?? 0);
        const servers = p.servers.size + (prev?.currentConnections ?? 0);
        seen.set(p.database, {
          name: p.database,
          host: c.upstream.host,
          port: c.upstream.port,
          database: p.database,
          poolSize: p.settings.size,
          minPoolSize: p.settings.minIdle,
          reservePoolSize: p.settings.reserveSize,
          serverLifetime: Math.round(p.settings.serverLifetimeMs / 1000),
          poolMode: p.settings.mode,
          maxConnections: 0,
          currentConnections: servers,
          maxClientConnections: p.settings.maxClients,
          currentClientConnections: clients,
          paused: false,
          disabled: false,
        });
      }
      return [...seen.values()];
    },
    lists() {
      const all = pools.all();
      let servers = 0;
      let logins = 0;
      for (const p of all) {
        servers += p.servers.size;
        logins += p.loginCount;
      }
      return {
        databases: new Set(all.map((p) => p.database)).size,
        users: new Set(all.map((p) => p.role)).size,
        peers: 0,
        pools: all.length,
        peerPools: 0,
        freeClients: 0,
        usedClients: sessions.size,
        loginClients: [...sessions.values()].filter((s) => s.poolView === undefined).length,
        freeServers: 0,
        usedServers: servers + logins,
        dnsNames: 0,
        dnsZones: 0,
        dnsQueries: 0,
        dnsPending: 0,
      };
    },
    config(): readonly ConfigRow[] {
      const p = config().pool;
      const row = (key: string, value: unknown, def: unknown): ConfigRow => ({
        key,
        value: String(value),
        default: String(def),
        changeable: false,
      });
      return [
        row("pool_mode", p.mode, "session"),
        row("default_pool_size", p.size, 20),
        row("min_pool_size", p.minIdle, 0),
        row("reserve_pool_size", p.reserveSize, 0),
        row("reserve_pool_timeout", p.reserveAfterMs / 1000, 5),
        row("max_client_conn", config().limits.maxClientConnections, 1000),
        row("query_wait_timeout", p.queryWaitTimeoutMs / 1000, 120),
        row("idle_transaction_timeout", p.idleInTransactionTimeoutMs / 1000, 0),
        row("transaction_timeout", p.transactionTimeoutMs / 1000, 0),
        row("server_lifetime", p.serverLifetimeMs / 1000, 3600),
        row("server_idle_timeout", p.serverIdleTimeoutMs / 1000, 600),
        row("server_connect_timeout", p.serverConnectTimeoutMs / 1000, 15),
        row("server_check_delay", p.serverCheckDelayMs / 1000, 30),
        row("server_check_query", p.serverCheckQuery, ""),
        row("server_reset_query", p.resetQuery, "DISCARD ALL"),
        row(
          "max_prepared_statements",
          p.preparedStatements.enabled ? p.preparedStatements.perServerCapacity : 0,
          200,
        ),
      ];
    },
  };
};
