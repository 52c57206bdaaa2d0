import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { isAuditError } from "../../src/audit/AuditError.ts";
import { startAuditWorker } from "../../src/audit/AuditWorker.ts";
import { deriveScramVerifier, type ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { decodeConfig } from "../../src/runtime/config.ts";
import { createLogger } from "../../src/runtime/logger.ts";
import { startServer } from "../../src/runtime/Server.ts";
import { makeKeys } from "../audit/support/auditLog.ts";
import { type AuditedProxy, INSTANCE, PASSWORD, readRecords, USER } from "../auditwire/support.ts";
import { PgSession } from "../support/pgSession.ts";
import { postgresInfo } from "../support/postgres.ts";

/**
 * As test/auditwire's startAuditedProxy (the real pipeline on its worker thread, segments in a
 * fresh directory), plus any other top-level config section (e.g. `pool`).
 */
export const auditedProxy = async (
  audit: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): Promise<AuditedProxy> => {
  const pg = postgresInfo();
  const keys = await makeKeys("auditdiff");
  const dir = await mkdtemp(join(tmpdir(), "pgw-auditdiff-"));
  const users: ReadonlyMap<string, ScramVerifier> = new Map([
    [USER, deriveScramVerifier(PASSWORD, { salt: Buffer.alloc(16, 9) })],
  ]);
  const config = decodeConfig({
    listen: { host: "127.0.0.1", port: 0 },
    upstream: { host: pg.host, port: pg.port, user: "pgw_app", password: pg.rolePassword },
    access: { grants: [{ identity: "*", databases: ["*"] }] },
    auth: { method: "scram-sha-256", allowPasswordOverPlaintext: true },
    shutdown: { drainTimeoutMs: 2000 },
    log: { level: "info" },
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
  const running = await startAuditWorker(config.audit!, log, "test");
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

/** A raw session through the proxy (SCRAM as the identity `postgres`). */
export const viaProxy = (p: AuditedProxy): Promise<PgSession> =>
  PgSession.login({ port: p.port, user: USER, database: "postgres", password: PASSWORD });

/** A raw session straight to PostgreSQL as the role the proxy uses upstream. */
export const direct = (): Promise<PgSession> => {
  const pg = postgresInfo();
  return PgSession.login({ port: pg.port, user: "pgw_app", database: "postgres", password: pg.rolePassword });
};

export type Rec = Record<string, unknown>;

/** Stops the proxy (drains and seals the trail) and returns every record. */
export const closeAndRead = async (p: AuditedProxy): Promise<Rec[]> => {
  await p.close();
  return readRecords(p.dir);
};

/** The statement records of the session whose Query/Parse text contains `marker`. */
export const statementsOf = (records: readonly Rec[], marker: string): Rec[] => {
  const first = records.find((r) => r.kind === "statement" && String(r.text ?? "").includes(marker));
  if (first === undefined) throw new Error(`no statement with ${marker}`);
  return records.filter((r) => r.kind === "statement" && r.session === first.session);
};

/** message:outcome[:sqlstate][:commandTag] of each statement record, for readable diffs. */
export const brief = (rs: readonly Rec[]): string[] =>
  rs.map((r) => [r.message, r.outcome, r.sqlstate ?? "-", r.commandTag ?? "-"].map(String).join(":"));
