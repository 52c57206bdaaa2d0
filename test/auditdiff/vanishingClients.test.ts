import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCopyData } from "../../src/protocol/frontend.ts";
import { type AuditedProxy, verifyCli } from "../auditwire/support.ts";
import { msg } from "../support/pgSession.ts";
import { directClient } from "../support/postgres.ts";
import { auditedProxy, closeAndRead, type Rec, viaProxy } from "./support.ts";

/**
 * Clients that vanish (socket destroyed, no Terminate) in the middle of a statement or of a COPY.
 * Every such session must still end with its `connection.closed` record and the log must verify
 * intact after a clean stop. A statement that reached PostgreSQL and began running must be in the
 * trail too, whatever its outcome: straight to PostgreSQL the INSERT below commits after its client
 * is gone (client_connection_check_interval is 0), so a trail without it would miss a change.
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const mode of ["session", "transaction"] as const)
  describe(`${mode} mode: clients that vanish mid-statement or mid-COPY`, () => {
    let proxy: AuditedProxy;
    let records: Rec[];
    let committed = 0;
    const sessions: string[] = [];

    beforeAll(async () => {
      const admin = await directClient();
      try {
        await admin.query("DROP TABLE IF EXISTS auditdiff_vanish");
        await admin.query("CREATE TABLE auditdiff_vanish (a text)");
        await admin.query("GRANT ALL ON auditdiff_vanish TO pgw_app");
        proxy = await auditedProxy({ statements: "full" }, { pool: { mode, size: 2 } });
        // 1. mid-statement: an autocommit INSERT that takes 600 ms; the client is gone after 150 ms.
        const a = await viaProxy(proxy);
        a.send(msg.query("INSERT INTO auditdiff_vanish SELECT 'vanish-insert-marker' FROM pg_sleep(0.6)"));
        await sleep(150);
        a.vanish();
        // 2. mid-COPY FROM STDIN: data sent, no CopyDone.
        const b = await viaProxy(proxy);
        b.send(
          msg.query("COPY auditdiff_vanish FROM STDIN"),
          encodeCopyData(Buffer.from("vanish-copy-row\n")),
        );
        await sleep(150);
        b.vanish();
        // 3. mid extended batch: Parse/Bind/Execute of a slow SELECT, Sync, gone.
        const c = await viaProxy(proxy);
        c.send(
          msg.parse("", "SELECT pg_sleep(0.4), 'vanish-ext-marker'"),
          msg.bind(""),
          msg.execute(""),
          msg.sync(),
        );
        await sleep(100);
        c.vanish();
        await sleep(1200);
        committed = Number(
          (
            await admin.query(
              "SELECT count(*)::int AS n FROM auditdiff_vanish WHERE a = 'vanish-insert-marker'",
            )
          ).rows[0].n,
        );
        records = await closeAndRead(proxy);
        for (const r of records)
          if (r.kind === "connection.accepted" && !sessions.includes(String(r.session)))
            sessions.push(String(r.session));
        await admin.query("DROP TABLE IF EXISTS auditdiff_vanish");
      } finally {
        await admin.end();
      }
    }, 30_000);
    afterAll(async () => {
      await proxy?.close().catch(() => {});
    });

    it("every session has exactly one connection.closed record", () => {
      expect(sessions.length).toBe(3);
      for (const s of sessions)
        expect(records.filter((r) => r.kind === "connection.closed" && r.session === s).length).toBe(1);
    });

    it("pgwarden audit verify reports the log intact after a clean stop", () => {
      const v = verifyCli(proxy.dir, proxy.keys);
      expect(v.stderr).toBe("");
      expect(v.code).toBe(0);
    });

    it("statements PostgreSQL received before their client vanished are in the trail", () => {
      // Straight to PostgreSQL the same INSERT commits after its client is gone; through pgwarden it
      // does not (the server connection is given up), so PostgreSQL received it, began it and
      // aborted it. Either way it reached the database, and the trail must say so, once.
      expect(committed).toBe(0);
      const withText = (marker: string) =>
        records.filter((r) => r.kind === "statement" && String(r.text ?? "").includes(marker)).length;
      expect({
        insert: withText("vanish-insert-marker"),
        copy: withText("COPY auditdiff_vanish"),
        extended: withText("vanish-ext-marker"),
      }).toEqual({ insert: 1, copy: 1, extended: 1 });
    });

    it("the vanished COPY and extended batch leave no record claiming success", () => {
      const ok = records.filter(
        (r) =>
          r.kind === "statement" &&
          r.outcome === "ok" &&
          (r.message === "Copy" || String(r.text ?? "").includes("vanish-ext-marker")),
      );
      // The COPY never completed; nothing about it may read as a successful COPY.
      expect(ok.filter((r) => r.message === "Copy")).toEqual([]);
    });
  });
