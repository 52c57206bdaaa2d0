import type {
  AdminSource,
  ClientRow,
  ConfigRow,
  DatabaseRow,
  PoolRow,
  ServerRow,
  StatsCounters,
  StatsRow,
} from "../../src/admin/snapshot.ts";
import { splitMessages, type WireMessage } from "../support/wire.ts";

/** A small, fully populated snapshot: one pool, one client linked to one server. */
export const pool: PoolRow = {
  database: "app",
  user: "app_rw",
  clActive: 3,
  clWaiting: 1,
  clActiveCancelReq: 0,
  clWaitingCancelReq: 0,
  svActive: 2,
  svActiveCancel: 0,
  svBeingCanceled: 1,
  svIdle: 4,
  svUsed: 0,
  svTested: 0,
  svLogin: 1,
  maxWaitUs: 2_500_123,
  poolMode: "transaction",
};

const connection = {
  user: "alice",
  database: "app",
  replication: "none",
  addr: "127.0.0.1",
  port: 50_000,
  localAddr: "127.0.0.1",
  localPort: 6432,
  connectTime: new Date(Date.UTC(2024, 4, 1, 12, 0, 5)),
  requestTime: new Date(Date.UTC(2024, 4, 1, 12, 0, 7, 900)),
  waitUs: 1_000_042,
  closeNeeded: false,
  remotePid: 0,
  tls: "TLSv1.3/TLS_AES_256_GCM_SHA384",
  applicationName: "psql",
  preparedStatements: 2,
} as const;

export const client: ClientRow = { ...connection, id: 7, link: 255, state: "active" };
export const idleClient: ClientRow = { ...connection, id: 8, state: "active", tls: "" };
export const server: ServerRow = {
  ...connection,
  user: "app_rw",
  id: 255,
  link: 7,
  remotePid: 4242,
  state: "active",
  closeNeeded: true,
};

const counters = (k: bigint): StatsCounters => ({
  serverAssignmentCount: 10n * k,
  xactCount: 11n * k,
  queryCount: 12n * k,
  bytesReceived: 13n * k,
  bytesSent: 14n * k,
  xactTimeUs: 15n * k,
  queryTimeUs: 16n * k,
  waitTimeUs: 17n * k,
  clientParseCount: 18n * k,
  serverParseCount: 19n * k,
  bindCount: 20n * k,
});
export const stats: StatsRow = {
  database: "app",
  total: counters(1_000_000_000_000n),
  average: counters(1n),
};

export const database: DatabaseRow = {
  name: "app",
  host: "10.0.0.5",
  port: 5432,
  database: "app_prod",
  poolSize: 20,
  minPoolSize: 0,
  reservePoolSize: 5,
  serverLifetime: 3600,
  maxConnections: 0,
  currentConnections: 6,
  maxClientConnections: 0,
  currentClientConnections: 4,
  paused: false,
  disabled: true,
};

export const config: ConfigRow[] = [
  { key: "max_client_conn", value: "10000", default: "100", changeable: true },
  { key: "listen_port", value: "6432", default: "6432", changeable: false },
];

export const sampleSource = (over: Partial<AdminSource> = {}): AdminSource => ({
  pools: () => [pool],
  clients: () => [client, idleClient],
  servers: () => [server],
  stats: () => [stats],
  databases: () => [database],
  lists: () => ({
    databases: 1,
    users: 2,
    peers: 0,
    pools: 1,
    peerPools: 0,
    freeClients: 0,
    usedClients: 2,
    loginClients: 0,
    freeServers: 0,
    usedServers: 1,
    dnsNames: 0,
    dnsZones: 0,
    dnsQueries: 0,
    dnsPending: 0,
  }),
  config: () => config,
  version: "0.1.0",
  ...over,
});

export const split = (out: readonly Buffer[]): WireMessage[] => splitMessages(Buffer.concat(out));
