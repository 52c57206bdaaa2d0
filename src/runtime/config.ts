// Effect by module, not the package index: the index loads every module (≈ 13 MB of start memory).
import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";
import { ClientTlsConfig, UpstreamTlsConfig } from "../adapters/tls/config.ts";
import { AdminSection } from "../admin/config.ts";
import { AuditConfig } from "../audit/AuditConfig.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { compileAccessPolicy, AccessConfig as RulesConfig } from "../policy/accessRules.ts";
import { SessionControlsConfig } from "../policy/sessionLimits.ts";
import { PinningConfig, PreparedStatementsConfig } from "../pool/config.ts";

/**
 * The one configuration schema. YAML file, environment and flags are merged in that order and
 * validated here, so every error names the key and what it expected. docs/configuration.md is
 * checked against `configReference` by a test.
 */

const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);

const Port = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 65535 }));
const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));
const Millis = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));

export const LogLevel = Schema.Literals(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);
export const AuthMethod = Schema.Literals(["scram-sha-256", "trust"]);

export const ListenConfig = Schema.Struct({
  host: withDefault(Schema.String, "127.0.0.1"),
  port: withDefault(Port, 6432),
});

/** A secret: decoded into Redacted so that printing or logging the config never shows it. */
const Secret = Schema.String.pipe(Schema.decodeTo(Schema.RedactedFromValue(Schema.String)));

export const UpstreamConfig = Schema.Struct({
  host: withDefault(Schema.String, "127.0.0.1"),
  port: withDefault(Port, 5432),
  /** Role pgwarden logs in as when the client's grant names none. */
  user: Schema.optionalKey(Schema.String),
  /** Only when true may the client's own user name serve as the upstream role. */
  fallbackToClientUser: withDefault(Schema.Boolean, false),
  password: Schema.optionalKey(Secret),
  connectTimeoutMs: withDefault(Millis, 5000),
  /** TLS to PostgreSQL: disable | require | verify-ca | verify-full; never a plaintext fallback. */
  tls: withDefault(UpstreamTlsConfig, {}),
});

export const AuthConfig = Schema.Struct({
  method: withDefault(AuthMethod, "scram-sha-256"),
  usersFile: withDefault(Schema.String, "pgwarden-users.txt"),
  /** One deadline for everything before the first ReadyForQuery, upstream login included. */
  timeoutMs: withDefault(Millis, 10_000),
  /** Passwords (SCRAM) on a client leg without TLS are refused unless this is true. */
  allowPasswordOverPlaintext: withDefault(Schema.Boolean, false),
});

export const LimitsConfig = Schema.Struct({
  maxClientConnections: withDefault(PositiveInt, 1000),
  /** CancelRequests are served outside the client cap, with a small cap of their own. */
  maxCancelConnections: withDefault(PositiveInt, 16),
  /** Largest client message pgwarden buffers (Query, Parse, Bind, FunctionCall, CopyData). */
  maxMessageBytes: withDefault(PositiveInt.check(Schema.isLessThanOrEqualTo(1_073_741_823)), 268_435_456),
  /** Bytes waiting in one connection's write queues beyond which it is ended. */
  maxBufferedBytesPerConnection: withDefault(PositiveInt, 1_048_576),
  /** How long an ending connection may take to close before its sockets are destroyed. */
  lingerMs: withDefault(Millis, 500),
});

/** Startup parameters PostgreSQL sessions may receive from clients: the default allowlist. */
export const defaultStartupParameters = [
  "application_name",
  "client_encoding",
  "DateStyle",
  "TimeZone",
  "IntervalStyle",
  "extra_float_digits",
  "search_path",
];

export const StartupConfig = Schema.Struct({
  /** Only these go upstream; names compare case-insensitively, as PostgreSQL's GUCs do. */
  parameters: withDefault(Schema.Array(Schema.String), defaultStartupParameters),
  /** The `options` parameter: refused, or reduced to allowlisted `-c name=value` settings. */
  options: withDefault(Schema.Literals(["refuse", "filter"]), "refuse"),
});

export const Grant = Schema.Struct({
  /** A client identity, or "*" for any. */
  identity: Schema.String,
  /** Databases the identity may ask for; "*" for any. */
  databases: Schema.Array(Schema.String),
  /** Upstream role; when absent, upstream.user. */
  role: Schema.optionalKey(Schema.String),
});
export type Grant = typeof Grant.Type;

/** Grants (identity → databases, upstream role) beside the ordered access rules of src/policy. */
export const AccessConfig = Schema.Struct({
  /** First grant whose identity matches decides; none matching is a 28000. */
  grants: withDefault(Schema.Array(Grant), []),
  ...RulesConfig.fields,
  // Cross-rule checks (unique names, declared groups, nothing hidden behind a catch-all), as compiled.
}).check(
  Schema.makeFilter((c) => {
    const compiled = compileAccessPolicy(c);
    return isPgwardenError(compiled) ? compiled.message : undefined;
  }),
);

const PoolMode = Schema.Literals(["session", "transaction", "statement"]);

/** A pool's own mode or size for a database and/or an identity; the first matching override applies. */
export const PoolOverride = Schema.Struct({
  database: Schema.optionalKey(Schema.String),
  identity: Schema.optionalKey(Schema.String),
  mode: Schema.optionalKey(PoolMode),
  size: Schema.optionalKey(PositiveInt),
});

export const PoolConfig = Schema.Struct({
  /**
   * session: a client keeps one server connection for its life, reused once the client leaves;
   * transaction: a server connection serves a client for one transaction; statement: for one
   * statement, and transaction blocks are refused (docs/pooling.md).
   */
  mode: withDefault(PoolMode, "session"),
  /** Server connections per pool, a pool being one (database, upstream role). */
  size: withDefault(PositiveInt, 20),
  /** Idle server connections each pool keeps logged in ahead of demand. */
  minIdle: withDefault(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)), 0),
  /** Extra server connections a pool may open once a client has waited `reserveAfterMs`. */
  reserveSize: withDefault(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)), 0),
  reserveAfterMs: withDefault(Millis, 5_000),
  /** Clients per pool; 0: only `limits.maxClientConnections` applies. */
  maxClientsPerPool: withDefault(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)), 0),
  /** How long a client waits for a server connection before it is refused (0: forever). */
  queryWaitTimeoutMs: withDefault(Millis, 120_000),
  /** Pooled modes: a client idle inside a transaction this long is ended (0: never). */
  idleInTransactionTimeoutMs: withDefault(Millis, 0),
  /** Pooled modes: a transaction open this long ends its client (0: never). */
  transactionTimeoutMs: withDefault(Millis, 0),
  /** Server connections older than this are closed when next released (0: never). */
  serverLifetimeMs: withDefault(Millis, 3_600_000),
  /** Idle server connections are closed after this long unused, down to `minIdle` (0: never). */
  serverIdleTimeoutMs: withDefault(Millis, 600_000),
  /** Connect and log in to PostgreSQL within this long. */
  serverConnectTimeoutMs: withDefault(Millis, 15_000),
  /** A connection idle longer than this is checked with `serverCheckQuery` before checkout (0: always). */
  serverCheckDelayMs: withDefault(Millis, 30_000),
  /** The liveness check; the empty query costs PostgreSQL nothing but a round trip. */
  serverCheckQuery: withDefault(Schema.String, ""),
  /** Session mode: run on a server connection before another client gets it. */
  resetQuery: withDefault(Schema.String, "DISCARD ALL"),
  /** Idle server connections kept per pool; 0 turns reuse off. */
  maxIdlePerKey: withDefault(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)), 20),
  /** Protocol-level prepared statements mapped across server connections in pooled modes. */
  preparedStatements: withDefault(PreparedStatementsConfig, {}),
  /** Pooled modes: what happens to state that cannot move between server connections. */
  pinning: withDefault(PinningConfig, {}),
  overrides: withDefault(Schema.Array(PoolOverride), []),
});

export const ShutdownConfig = Schema.Struct({
  drainTimeoutMs: withDefault(Millis, 30_000),
});

export const LogConfig = Schema.Struct({
  level: withDefault(LogLevel, "info"),
});

export const PgwardenConfig = Schema.Struct({
  listen: withDefault(ListenConfig, {}),
  upstream: withDefault(UpstreamConfig, {}),
  startup: withDefault(StartupConfig, {}),
  access: withDefault(AccessConfig, {}),
  auth: withDefault(AuthConfig, {}),
  limits: withDefault(LimitsConfig, {}),
  pool: withDefault(PoolConfig, {}),
  shutdown: withDefault(ShutdownConfig, {}),
  log: withDefault(LogConfig, {}),
  /** The client leg's TLS (docs/tls.md). */
  tls: withDefault(ClientTlsConfig, {}),
  /** Concurrent-session limits, idle timeout and maximum lifetime (docs/access-rules.md). */
  sessions: withDefault(SessionControlsConfig, {}),
  /** OpenSSL FIPS mode at start; pgwarden refuses to start unless the self-test passes (docs/fips.md). */
  fips: withDefault(Schema.Boolean, false),
  /** The audit trail; absent in a config file means audit off (serve warns). Embedded mode sets it. */
  audit: Schema.optionalKey(AuditConfig),
  /** Who may open the admin console (SHOW POOLS, …) and under which database name (docs/admin.md). */
  admin: AdminSection,
});
export type PgwardenConfig = typeof PgwardenConfig.Type;

/** Every leaf key with its default, for the reference document and its test. */
export const configReference = (): Record<string, unknown> => {
  const defaults = Schema.decodeUnknownSync(PgwardenConfig)({});
  const out: Record<string, unknown> = {};
  const walk = (prefix: string, v: unknown) => {
    if (typeof v === "object" && v !== null && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v)) walk(prefix === "" ? k : `${prefix}.${k}`, x);
    } else out[prefix] = v;
  };
  walk("", defaults);
  // The audit section has required keys, so its defaults come from a minimal example.
  const audit = Schema.decodeUnknownSync(AuditConfig)({
    dir: "-",
    hmacKeyFile: "-",
    signing: {},
    sinks: {
      syslog: { host: "-", ca: "-", cert: "-", key: "-" },
      jetstream: { servers: ["-"] },
    },
  });
  walk("audit", audit);
  for (const k of [
    "audit.dir",
    "audit.hmacKeyFile",
    "audit.instance",
    "audit.signing.pemFile",
    "audit.signing.pkcs11.module",
    "audit.signing.pkcs11.tokenLabel",
    "audit.signing.pkcs11.slot",
    "audit.signing.pkcs11.pinFile",
    "audit.signing.pkcs11.pinEnv",
    "audit.signing.pkcs11.keyLabel",
    "audit.sinks.syslog.host",
    "audit.sinks.syslog.ca",
    "audit.sinks.syslog.cert",
    "audit.sinks.syslog.key",
    "audit.sinks.syslog.servername",
    "audit.sinks.jetstream.servers",
    "audit.sinks.jetstream.credentials",
    "audit.sinks.jetstream.tls.ca",
    "audit.sinks.jetstream.tls.cert",
    "audit.sinks.jetstream.tls.key",
    "upstream.user",
    "upstream.password",
    "upstream.tls.ca",
    "upstream.tls.servername",
    "upstream.tls.cert",
    "upstream.tls.key",
    "tls.cert",
    "tls.key",
    "tls.clientCa",
    "tls.clientCrl",
    "sessions.maxPerIdentity",
    "sessions.maxPerSource",
  ])
    out[k] = undefined;
  return out;
};

/** Environment variables and the key each sets; numbers are parsed, the schema checks them. */
export const envKeys: Readonly<Record<string, string>> = {
  PGWARDEN_LISTEN_HOST: "listen.host",
  PGWARDEN_LISTEN_PORT: "listen.port",
  PGWARDEN_UPSTREAM_HOST: "upstream.host",
  PGWARDEN_UPSTREAM_PORT: "upstream.port",
  PGWARDEN_UPSTREAM_USER: "upstream.user",
  PGWARDEN_UPSTREAM_PASSWORD: "upstream.password",
  PGWARDEN_AUTH_METHOD: "auth.method",
  PGWARDEN_USERS_FILE: "auth.usersFile",
  PGWARDEN_LOG_LEVEL: "log.level",
};

const numericKeys = new Set(["listen.port", "upstream.port"]);

/** Sets a dotted key in a nested plain object, creating levels as needed. */
export const setPath = (target: Record<string, unknown>, path: string, raw: string): void => {
  const parts = path.split(".");
  let o = target;
  for (const p of parts.slice(0, -1)) {
    const next = o[p];
    if (typeof next !== "object" || next === null) o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  o[parts.at(-1)!] = numericKeys.has(path) && /^\d+$/.test(raw) ? Number(raw) : raw;
};

const configError = (message: string): PgwardenError =>
  pgwardenError("PGW_CONFIG", SqlState.internalError, message);

/** Parses YAML text into a plain object, or an error naming the file and line. */
export const parseConfigText = async (
  text: string,
  source: string,
): Promise<Record<string, unknown> | PgwardenError> => {
  // Loaded only when there is a file to read: the parser is a large share of start memory.
  const { parse: parseYaml } = await import("yaml");
  try {
    const doc = parseYaml(text) as unknown;
    if (doc === null || doc === undefined) return {};
    if (typeof doc !== "object" || Array.isArray(doc))
      return configError(`${source}: expected a mapping at the top level`);
    return doc as Record<string, unknown>;
  } catch (e) {
    return configError(`${source}: ${(e as Error).message}`);
  }
};

/** Validates merged input; unknown keys are errors because a typo in a security setting must not pass. */
export const decodeConfig = (input: unknown): PgwardenConfig | PgwardenError => {
  const result = Schema.decodeUnknownExit(PgwardenConfig)(input, {
    onExcessProperty: "error",
    errors: "all",
  });
  if (result._tag === "Success") return result.value;
  const failure = result.cause.reasons.find((r) => r._tag === "Fail");
  const text =
    failure?._tag === "Fail" ? String((failure.error as { message?: string }).message) : String(result.cause);
  const readable = text.replace(
    /at ((?:\["[^"]*"\])+)/g,
    (_m, path: string) => `at ${JSON.parse(`[${path.slice(1, -1).split("][").join(",")}]`).join(".")}`,
  );
  return configError(`invalid configuration:\n${readable.replace(/^/gm, "  ")}`);
};

/** Layers environment overrides over file contents. */
export const applyEnv = (
  base: Record<string, unknown>,
  env: Readonly<Record<string, string | undefined>>,
): Record<string, unknown> => {
  const out = structuredClone(base);
  for (const [name, key] of Object.entries(envKeys)) {
    const v = env[name];
    if (v !== undefined && v !== "") setPath(out, key, v);
  }
  return out;
};
