import { spawnSync } from "node:child_process";
import { mkdtemp, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Schema } from "effect";
import { AuditConfig } from "../../src/audit/AuditConfig.ts";
import { isAuditError } from "../../src/audit/AuditError.ts";
import { validateRecord } from "../../src/audit/AuditEvent.ts";
import { startAuditWorker } from "../../src/audit/AuditWorker.ts";
import { openAuditPipeline, type RunningAudit, startAudit } from "../../src/audit/openPipeline.ts";
import { readSegmentLines } from "../../src/audit/segmentFiles.ts";
import { deriveScramVerifier, type ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { decodeConfig } from "../../src/runtime/config.ts";
import { createLogger } from "../../src/runtime/logger.ts";
import { type RunningServer, startServer } from "../../src/runtime/Server.ts";
import { type Keys, makeKeys } from "../audit/support/auditLog.ts";
import { CLI } from "../support/cli.ts";
import { postgresInfo } from "../support/postgres.ts";

export const USER = "postgres";
export const PASSWORD = "auditwire-client-password";
export const INSTANCE = "pgw-wire";
const users: ReadonlyMap<string, ScramVerifier> = new Map([
  [USER, deriveScramVerifier(PASSWORD, { salt: Buffer.alloc(16, 9) })],
]);

export interface AuditedProxy {
  readonly server: RunningServer;
  readonly port: number;
  readonly audit: RunningAudit;
  readonly dir: string;
  readonly keys: Keys;
  readonly logs: string[];
  connection(
    user?: string,
    database?: string,
  ): {
    host: string;
    port: number;
    user: string;
    password: string;
    database: string;
  };
  /** Stops the proxy, then drains and seals the audit trail. */
  close(): Promise<void>;
}

/** pgwarden in-process with the real audit pipeline as its event sink, segments in a fresh directory. */
export const startAuditedProxy = async (
  audit: Record<string, unknown> = {},
  grants: unknown[] = [{ identity: "*", databases: ["*"] }],
  /** `worker`: the pipeline on its own thread, as `pgwarden serve` runs it; `inline`: in this one. */
  thread: "worker" | "inline" = "worker",
  /** The audit directory and keys of an earlier proxy, to restart on its log. */
  home?: { readonly dir: string; readonly keys: Keys },
  /** Any other top-level configuration sections (e.g. `pool`). */
  extra: Record<string, unknown> = {},
): Promise<AuditedProxy> => {
  const pg = postgresInfo();
  const keys = home?.keys ?? (await makeKeys("wire"));
  const dir = home?.dir ?? (await mkdtemp(join(tmpdir(), "pgw-auditwire-")));
  const config = decodeConfig({
    listen: { host: "127.0.0.1", port: 0 },
    upstream: { host: pg.host, port: pg.port, user: "pgw_app", password: pg.rolePassword },
    access: { grants },
    // Plaintext SCRAM on loopback, as the default test proxy allows it: TLS is not what is tested here.
    auth: { method: "scram-sha-256", allowPasswordOverPlaintext: true },
    shutdown: { drainTimeoutMs: 2000 },
    log: { level: "debug" },
    ...extra,
    audit: {
      dir,
      instance: INSTANCE,
      hmacKeyFile: keys.hmacKeyFile,
      signing: { pemFile: keys.signingKeyFile },
      fsyncBatchMs: 1,
      ...audit,
    },
  });
  if (isPgwardenError(config)) throw new Error(config.message);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split("\n")) if (line !== "") logs.push(line);
      cb();
    },
  });
  const log = createLogger(config.log.level, sink);
  const running =
    thread === "worker"
      ? await startAuditWorker(config.audit!, log, "test")
      : await startAudit(openAuditPipeline(config.audit!, log, "test"));
  if (isAuditError(running)) throw new Error(running.message);
  const server = await startServer({ config, log, users: () => users, events: running.pipeline.sink });
  let closed = false;
  return {
    server,
    port: server.port,
    audit: running,
    dir,
    keys,
    logs,
    connection: (user = USER, database = "postgres") => ({
      host: "127.0.0.1",
      port: server.port,
      user,
      password: PASSWORD,
      database,
    }),
    close: async () => {
      if (closed) return;
      closed = true;
      await server.stop();
      const err = await running.stop(config.audit!.drainTimeoutMs);
      if (err !== undefined) throw new Error(err.message);
    },
  };
};

/**
 * Every complete record in the directory, parsed, in file and line order. A last line without its
 * newline (one the writer is still appending, or was killed appending) is left out by the
 * product's own `readSegmentLines`; `verifyCli` is what judges a torn tail.
 */
export const readRecords = async (dir: string): Promise<Record<string, unknown>[]> => {
  const out: Record<string, unknown>[] = [];
  for (const f of (await readdir(dir)).filter((n) => n.endsWith(".jsonl")).sort())
    for (const line of (await readSegmentLines(join(dir, f))).lines)
      if (line !== "") out.push(JSON.parse(line) as Record<string, unknown>);
  return out;
};

/** Throws naming the first record that does not validate against the AuditRecord schema. */
export const expectAllValid = (records: readonly Record<string, unknown>[]): void => {
  for (const r of records) {
    const v = validateRecord(r);
    if ("_tag" in v && v._tag === "AuditError") throw new Error(`seq ${String(r.seq)}: ${v.message}`);
  }
};

/** `pgwarden audit verify` as a process, with both keys. */
export const verifyCli = (dir: string, keys: Keys, json = false) => {
  const r = spawnSync(
    process.execPath,
    [
      CLI,
      "audit",
      "verify",
      dir,
      "--key",
      keys.hmacKeyFile,
      "--pubkey",
      keys.publicKeyFile,
      ...(json ? ["--json"] : []),
    ],
    { encoding: "utf8", timeout: 30_000 },
  );
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

export const decodeAuditConfig = Schema.decodeUnknownSync(AuditConfig);

export { eventually } from "../audit-sinks/support/queue.ts";
