import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditedProxy } from "../auditwire/support.ts";
import { msg, type PgSession, type Reply, typesOf } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, statementsOf, viaProxy } from "./support.ts";

/**
 * Pipelined extended-protocol batches with an error in the middle. PostgreSQL answers the
 * messages before the error, reports the error once, then discards everything up to Sync: the
 * later Bind/Execute never run. The audit trail must say so: a skipped Execute recorded as
 * `outcome: "ok"` tells an auditor a statement ran that PostgreSQL never executed. Each batch is
 * first sent straight to PostgreSQL, so the expectations are what the client was told.
 */

const group = (sql: string) => [msg.parse("", sql), msg.bind(""), msg.execute("")];

const RUNTIME_ERROR = [
  ...group("SELECT 'pipe-a-marker'"),
  ...group("SELECT 1/0"),
  ...group("SELECT 'pipe-c-skipped'"),
  msg.sync(),
];
const PARSE_ERROR = [
  ...group("SELECT 'parse-a-marker'"),
  ...group("SELEC 2"),
  ...group("SELECT 'parse-c-skipped'"),
  msg.sync(),
];
// A second sync group after the failed one runs normally.
const TWO_GROUPS = [
  ...group("SELECT 'two-a-marker'"),
  ...group("SELECT 1/0"),
  msg.sync(),
  ...group("SELECT 'two-b-runs'"),
  msg.sync(),
];

const run = async (s: PgSession, batch: readonly Buffer[], syncs: number): Promise<Reply[]> => {
  try {
    return await s.exchange(batch, syncs, 5000);
  } finally {
    s.terminate();
  }
};

for (const mode of ["session", "transaction"] as const)
  describe(`${mode} mode: pipelined extended batch with an error in the middle`, () => {
    let proxy: AuditedProxy;
    let records: Rec[];
    const seen: Record<string, { direct: string; proxied: string }> = {};

    beforeAll(async () => {
      proxy = await auditedProxy({ statements: "full" }, { pool: { mode, size: 2 } });
      for (const [name, batch, syncs] of [
        ["runtime", RUNTIME_ERROR, 1],
        ["parse", PARSE_ERROR, 1],
        ["two", TWO_GROUPS, 2],
      ] as const) {
        seen[name] = {
          direct: typesOf(await run(await direct(), batch, syncs)),
          proxied: typesOf(await run(await viaProxy(proxy), batch, syncs)),
        };
      }
      records = await closeAndRead(proxy);
    }, 30_000);
    afterAll(async () => {
      await proxy?.close().catch(() => {});
    });

    it("the client sees what PostgreSQL answers: one result, one error, nothing for the rest", () => {
      // 1/0 of constants fails at planning, so in Bind: BindComplete never comes.
      expect(seen.runtime).toEqual({ direct: "1 2 D C 1 E Z", proxied: "1 2 D C 1 E Z" });
      expect(seen.parse).toEqual({ direct: "1 2 D C E Z", proxied: "1 2 D C E Z" });
      expect(seen.two!.proxied).toBe(seen.two!.direct);
    });

    it("runtime error: the first Execute ok, the failing one 22012, the skipped one not recorded as run", () => {
      const st = statementsOf(records, "pipe-a-marker");
      expect(st.map((r) => r.message)).toEqual([
        "Parse",
        "Bind",
        "Execute",
        "Parse",
        "Bind",
        "Execute",
        "Parse",
        "Bind",
        "Execute",
      ]);
      expect(st[2]).toMatchObject({ outcome: "ok", commandTag: "SELECT 1", rows: 1 });
      expect(st[5]).toMatchObject({ outcome: "error", sqlstate: "22012" });
      // PostgreSQL never executed 'pipe-c-skipped': no record may say it ran successfully.
      const skipped = st.slice(6);
      expect(brief(skipped).filter((b) => b.includes(":ok:"))).toEqual([]);
    });

    it("parse error: the error is recorded once and the skipped Execute is not recorded as run", () => {
      const st = statementsOf(records, "parse-a-marker");
      expect(st[2]).toMatchObject({ outcome: "ok", commandTag: "SELECT 1" });
      expect(st.filter((r) => r.sqlstate === "42601").length).toBe(1);
      const skipped = st.slice(6);
      expect(skipped.map((r) => r.message)).toEqual(["Parse", "Bind", "Execute"]);
      expect(brief(skipped).filter((b) => b.includes(":ok:"))).toEqual([]);
    });

    it("the sync group after a failed one runs, and is recorded ok", () => {
      const st = statementsOf(records, "two-a-marker");
      expect(brief(st.slice(6))).toEqual(["Parse:ok:-:-", "Bind:ok:-:-", "Execute:ok:-:SELECT 1"]);
      expect(st[5]).toMatchObject({ outcome: "error", sqlstate: "22012" });
    });
  });
