import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Exit, Schema } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AuditSinksConfig,
  JetStreamSinkConfig,
  jetStreamSinkOptions,
  SinkQueueConfig,
  SyslogSinkConfig,
  syslogSinkOptions,
} from "../../src/adapters/audit/sinkConfig.ts";

let dir: string;
const secret = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key-but-secret\n-----END PRIVATE KEY-----\n";

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgwarden-sinkconfig-"));
  for (const f of ["ca.pem", "cert.pem"]) await writeFile(join(dir, f), `PEM ${f}\n`);
  await writeFile(join(dir, "key.pem"), secret, { mode: 0o600 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const syslog = Schema.decodeUnknownExit(SyslogSinkConfig);
const jetstream = Schema.decodeUnknownExit(JetStreamSinkConfig);
const queue = Schema.decodeUnknownExit(SinkQueueConfig);

describe("audit sink configuration", () => {
  it("fills defaults", () => {
    const syslog = Schema.decodeUnknownSync(SyslogSinkConfig)({ host: "logs", ca: "a", cert: "b", key: "c" });
    expect(syslog).toEqual({
      host: "logs",
      port: 6514,
      ca: "a",
      cert: "b",
      key: "c",
      appName: "pgwarden",
      facility: "authpriv",
      sdId: "pgwarden@32473",
      required: false,
      connectTimeoutMs: 5000,
      writeTimeoutMs: 10_000,
      settleMs: 200,
      replayMs: 2000,
      replayMaxLines: 10_000,
      queue: {
        maxQueued: 100_000,
        batchMax: 512,
        batchMs: 20,
        backoffMinMs: 100,
        backoffMaxMs: 30_000,
        attemptTimeoutMs: 60_000,
      },
    });
    const js = Schema.decodeUnknownSync(JetStreamSinkConfig)({ servers: ["nats://127.0.0.1:4222"] });
    expect(js).toMatchObject({
      stream: "PGWARDEN_AUDIT",
      subject: "pgwarden.audit",
      duplicateWindowMs: 600_000,
      replicas: 1,
      required: false,
    });
    expect(Schema.decodeUnknownSync(AuditSinksConfig)({})).toEqual({});
  });

  it.each([
    ["facility", () => syslog({ host: "h", ca: "a", cert: "b", key: "c", facility: "local9" })],
    ["sdId", () => syslog({ host: "h", ca: "a", cert: "b", key: "c", sdId: "has space@1" })],
    ["key missing", () => syslog({ host: "h", ca: "a", cert: "b" })],
    ["no servers", () => jetstream({ servers: [] })],
    ["backoff", () => queue({ backoffMinMs: 5000, backoffMaxMs: 100 })],
    ["batch", () => queue({ maxQueued: 10, batchMax: 100 })],
  ] as ReadonlyArray<readonly [string, () => Exit.Exit<unknown, unknown>]>)(
    "rejects invalid settings: %s",
    (_, decode) => {
      expect(Exit.isFailure(decode())).toBe(true);
    },
  );

  it("loads the PEM files a syslog sink needs", async () => {
    const config = Schema.decodeUnknownSync(SyslogSinkConfig)({
      host: "127.0.0.1",
      servername: "logs.example",
      ca: join(dir, "ca.pem"),
      cert: join(dir, "cert.pem"),
      key: join(dir, "key.pem"),
    });
    const options = await Effect.runPromise(syslogSinkOptions(config));
    expect(options.ca.toString()).toBe("PEM ca.pem\n");
    expect(options.key.toString()).toBe(secret);
    expect(options).toMatchObject({ servername: "logs.example", port: 6514, facility: "authpriv" });
  });

  it("names a missing file by path, never by content", async () => {
    const config = Schema.decodeUnknownSync(SyslogSinkConfig)({
      host: "h",
      ca: join(dir, "ca.pem"),
      cert: join(dir, "cert.pem"),
      key: join(dir, "missing.pem"),
    });
    const exit = await Effect.runPromiseExit(syslogSinkOptions(config));
    expect(exit).toMatchObject({ _tag: "Failure" });
    const text = JSON.stringify(exit);
    expect(text).toContain("PGW_AUDIT_SINK_CONFIG");
    expect(text).toContain("missing.pem: ENOENT");
    expect(text).not.toContain("not-a-real-key");
  });

  it("gives each instance its own subject under the stream's wildcard", async () => {
    const config = Schema.decodeUnknownSync(JetStreamSinkConfig)({
      servers: ["nats://127.0.0.1:4222"],
      tls: { ca: join(dir, "ca.pem") },
    });
    const options = await Effect.runPromise(jetStreamSinkOptions(config, "host-1.a*b"));
    expect(options.subject).toBe("pgwarden.audit.host-1_a_b");
    expect(options.streamSubjects).toEqual(["pgwarden.audit.>"]);
    expect(options.tls).toEqual({ ca: "PEM ca.pem\n" });
    expect(options.credentials).toBeUndefined();
  });
});
