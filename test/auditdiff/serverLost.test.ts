import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditedProxy } from "../auditwire/support.ts";
import { errorOf, msg, type PgSession } from "../support/pgSession.ts";
import { directClient } from "../support/postgres.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, viaProxy } from "./support.ts";

/**
 * The backend running a statement is terminated (pg_terminate_backend from another session):
 * PostgreSQL answers the statement with FATAL 57P01 and closes. The client was told that the
 * statement failed with 57P01; the trail must record that statement, once, with that SQLSTATE.
 */

const SQL = "SELECT pg_sleep(3), 'terminated-marker'";

/** The SQLSTATE the client got, after its backend was terminated 300 ms into the statement. */
const run = async (s: PgSession): Promise<string> => {
  const admin = await directClient();
  try {
    s.send(msg.query(SQL));
    await new Promise((r) => setTimeout(r, 300));
    await admin.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
      [SQL],
    );
    await s.wire.until((c) => c.messages().some((m) => m.type === "E"), 5000, "the error");
    const e = s.pending().find((m) => m.type === "E")!;
    return errorOf(e).code;
  } finally {
    s.vanish();
    await admin.end();
  }
};

for (const mode of ["session", "transaction"] as const)
  describe(`${mode} mode: a statement whose backend is terminated`, () => {
    let proxy: AuditedProxy;
    let records: Rec[];
    let directCode = "";
    let proxiedCode = "";

    beforeAll(async () => {
      proxy = await auditedProxy({ statements: "full" }, { pool: { mode, size: 2 } });
      directCode = await run(await direct());
      proxiedCode = await run(await viaProxy(proxy));
      await new Promise((r) => setTimeout(r, 200));
      records = await closeAndRead(proxy);
    }, 30_000);
    afterAll(async () => {
      await proxy?.close().catch(() => {});
    });

    it("the client gets 57P01 as from PostgreSQL", () => {
      expect(directCode).toBe("57P01");
      expect(proxiedCode).toBe(directCode);
    });

    it("the statement is recorded once, as an error with 57P01", () => {
      const st = records.filter(
        (r) => r.kind === "statement" && String(r.text ?? "").includes("terminated-marker"),
      );
      expect(brief(st)).toEqual(["Query:error:57P01:-"]);
      // The session's end is there (it is the statement record that is missing).
      expect(records.some((r) => r.kind === "connection.closed" && r.session === st[0]?.session)).toBe(true);
    });
  });
