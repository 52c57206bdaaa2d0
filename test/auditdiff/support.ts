import { type AuditedProxy, PASSWORD, readRecords, startAuditedProxy, USER } from "../auditwire/support.ts";
import { PgSession } from "../support/pgSession.ts";
import { postgresInfo } from "../support/postgres.ts";

/** test/auditwire's startAuditedProxy (the pipeline on its worker thread) with other config sections (e.g. `pool`). */
export const auditedProxy = (
  audit: Record<string, unknown>,
  extra: Record<string, unknown> = {},
): Promise<AuditedProxy> => startAuditedProxy(audit, undefined, "worker", undefined, extra);

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
