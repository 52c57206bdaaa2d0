import { readFile } from "node:fs/promises";
import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";
import { SinkError } from "./AuditSink.ts";
import type { JetStreamSinkOptions } from "./JetStreamSink.ts";
import { isSdName, SyslogFacilities } from "./rfc5424.ts";
import type { SyslogTlsSinkOptions } from "./SyslogTlsSink.ts";

/**
 * Configuration of the remote audit sinks, to sit under `audit.sinks`. Certificate, key and
 * credential settings are file paths; the loaders below read them and never echo their contents.
 */

const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);

const Port = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65535 }));
const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));
const Millis = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));
const Path = Schema.NonEmptyString;

export const SinkQueueConfig = Schema.Struct({
  /** Lines held per sink before `offer` refuses (the failure policy then applies). */
  maxQueued: withDefault(PositiveInt, 100_000),
  batchMax: withDefault(PositiveInt, 512),
  batchMs: withDefault(Millis, 20),
  backoffMinMs: withDefault(PositiveInt, 100),
  backoffMaxMs: withDefault(PositiveInt, 30_000),
  /** A delivery attempt not acknowledged by then counts as failed. */
  attemptTimeoutMs: withDefault(PositiveInt, 60_000),
}).check(
  Schema.makeFilter((q) =>
    q.backoffMinMs > q.backoffMaxMs
      ? "backoffMinMs must not exceed backoffMaxMs"
      : q.batchMax > q.maxQueued
        ? "batchMax must not exceed maxQueued"
        : true,
  ),
);
export type SinkQueueConfig = typeof SinkQueueConfig.Type;

export const SyslogSinkConfig = Schema.Struct({
  host: Schema.NonEmptyString,
  port: withDefault(Port, 6514),
  /** PEM file of the CA that signed the collector's certificate. */
  ca: Path,
  /** PEM files of pgwarden's client certificate and key (mutual TLS). */
  cert: Path,
  key: Path,
  /** Name the collector's certificate must carry; `host` unless set. */
  servername: Schema.optionalKey(Schema.NonEmptyString),
  appName: withDefault(Schema.NonEmptyString, "pgwarden"),
  facility: withDefault(Schema.Literals(SyslogFacilities), "authpriv"),
  /** SD-ID of the element carrying seq and id; 32473 is the documentation enterprise number (RFC 5612). */
  sdId: withDefault(
    Schema.String.check(Schema.makeFilter((s) => isSdName(s) || "an SD-NAME, e.g. pgwarden@32473")),
    "pgwarden@32473",
  ),
  /** Whether `audit.onFailure` applies when this sink cannot take records. */
  required: withDefault(Schema.Boolean, false),
  connectTimeoutMs: withDefault(PositiveInt, 5000),
  writeTimeoutMs: withDefault(PositiveInt, 10_000),
  settleMs: withDefault(Millis, 200),
  /** Resend what was written this long before a connection broke (0: never); copies are dropped by id. */
  replayMs: withDefault(Millis, 2000),
  replayMaxLines: withDefault(Millis, 10_000),
  queue: withDefault(SinkQueueConfig, {}),
});
export type SyslogSinkConfig = typeof SyslogSinkConfig.Type;

export const JetStreamTlsConfig = Schema.Struct({
  ca: Schema.optionalKey(Path),
  cert: Schema.optionalKey(Path),
  key: Schema.optionalKey(Path),
});

export const JetStreamSinkConfig = Schema.Struct({
  servers: Schema.NonEmptyArray(Schema.NonEmptyString),
  stream: withDefault(Schema.NonEmptyString, "PGWARDEN_AUDIT"),
  /** Subject prefix: an instance publishes on `<subject>.<instance id>`; a created stream captures `<subject>.>`. */
  subject: withDefault(Schema.NonEmptyString, "pgwarden.audit"),
  /** Dedup window of a stream the sink creates; an existing stream keeps its own. */
  duplicateWindowMs: withDefault(PositiveInt, 600_000),
  replicas: withDefault(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 5 })), 1),
  ackTimeoutMs: withDefault(PositiveInt, 5000),
  connectTimeoutMs: withDefault(PositiveInt, 5000),
  /** A NATS `.creds` file (user JWT and nkey seed). */
  credentials: Schema.optionalKey(Path),
  tls: Schema.optionalKey(JetStreamTlsConfig),
  required: withDefault(Schema.Boolean, false),
  queue: withDefault(SinkQueueConfig, {}),
});
export type JetStreamSinkConfig = typeof JetStreamSinkConfig.Type;

/** The `audit.sinks` section: each remote sink is off unless configured. */
export const AuditSinksConfig = Schema.Struct({
  syslog: Schema.optionalKey(SyslogSinkConfig),
  jetstream: Schema.optionalKey(JetStreamSinkConfig),
});
export type AuditSinksConfig = typeof AuditSinksConfig.Type;

const readPem = (sink: string, what: string, path: string) =>
  Effect.tryPromise({
    try: () => readFile(path),
    catch: (e) =>
      new SinkError({
        code: "PGW_AUDIT_SINK_CONFIG",
        sink,
        message: `cannot read ${what} file ${path}: ${(e as { code?: string }).code ?? "error"}`,
      }),
  });

/** Reads the PEM files a syslog sink needs. */
export const syslogSinkOptions = (config: SyslogSinkConfig): Effect.Effect<SyslogTlsSinkOptions, SinkError> =>
  Effect.gen(function* () {
    const [ca, cert, key] = yield* Effect.all([
      readPem("syslog", "ca", config.ca),
      readPem("syslog", "cert", config.cert),
      readPem("syslog", "key", config.key),
    ]);
    return {
      host: config.host,
      port: config.port,
      ca,
      cert,
      key,
      ...(config.servername === undefined ? {} : { servername: config.servername }),
      appName: config.appName,
      facility: config.facility,
      sdId: config.sdId,
      connectTimeoutMs: config.connectTimeoutMs,
      writeTimeoutMs: config.writeTimeoutMs,
      settleMs: config.settleMs,
      replayMs: config.replayMs,
      replayMaxLines: config.replayMaxLines,
    };
  });

/** NATS subject tokens may not hold `.`, `*`, `>` or whitespace. */
const subjectToken = (s: string) => s.replace(/[.*>\s]/g, "_");

/** Reads credentials and TLS files and fixes this instance's subject. */
export const jetStreamSinkOptions = (
  config: JetStreamSinkConfig,
  instanceId: string,
): Effect.Effect<JetStreamSinkOptions, SinkError> =>
  Effect.gen(function* () {
    const text = (what: string, path: string | undefined) =>
      path === undefined
        ? Effect.succeed(undefined)
        : Effect.map(readPem("jetstream", what, path), (b) => b.toString("utf8"));
    const credentials =
      config.credentials === undefined
        ? undefined
        : yield* readPem("jetstream", "credentials", config.credentials);
    const tlsFiles = config.tls;
    const tls =
      tlsFiles === undefined
        ? undefined
        : Object.fromEntries(
            Object.entries({
              ca: yield* text("tls ca", tlsFiles.ca),
              cert: yield* text("tls cert", tlsFiles.cert),
              key: yield* text("tls key", tlsFiles.key),
            }).filter(([, v]) => v !== undefined),
          );
    return {
      servers: config.servers,
      stream: config.stream,
      subject: `${config.subject}.${subjectToken(instanceId)}`,
      streamSubjects: [`${config.subject}.>`],
      duplicateWindowMs: config.duplicateWindowMs,
      replicas: config.replicas,
      ackTimeoutMs: config.ackTimeoutMs,
      connectTimeoutMs: config.connectTimeoutMs,
      ...(credentials === undefined ? {} : { credentials: new Uint8Array(credentials) }),
      ...(tls === undefined ? {} : { tls }),
    };
  });
