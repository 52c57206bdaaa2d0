import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditedProxy } from "../auditwire/support.ts";
import { msg, typesOf } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, type Rec, statementsOf, viaProxy } from "./support.ts";

/**
 * Transaction mode: a statement prepared on one server connection and executed on another is
 * prepared again there by pgwarden itself (a Parse the client never sent). The trail records
 * what the client asked for, exactly once: one Parse, then one Bind and one Execute per use,
 * each on the server connection that ran it.
 */

describe("transaction mode: a statement re-prepared on another server connection", () => {
  let proxy: AuditedProxy;
  let records: Rec[];
  const views: string[] = [];

  beforeAll(async () => {
    proxy = await auditedProxy({ statements: "full" }, { pool: { mode: "transaction", size: 2 } });
    const a = await viaProxy(proxy);
    const b = await viaProxy(proxy);
    try {
      views.push(typesOf(await a.exchange([msg.parse("s1", "SELECT 'reprep-marker'"), msg.sync()])));
      // b holds whichever connection a had, so a's next transaction runs on the other one.
      views.push(typesOf(await b.exchange([msg.query("BEGIN")])));
      views.push(typesOf(await a.exchange([msg.bind("s1"), msg.execute(""), msg.sync()])));
      views.push(typesOf(await b.exchange([msg.query("COMMIT")])));
      views.push(typesOf(await a.exchange([msg.bind("s1"), msg.execute(""), msg.sync()])));
    } finally {
      a.terminate();
      b.terminate();
    }
    records = await closeAndRead(proxy);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("the client sees one ParseComplete and two executions", () => {
    expect(views).toEqual(["1 Z", "C Z", "2 D C Z", "C Z", "2 D C Z"]);
  });

  it("one Parse, then Bind/Execute per use, nothing pgwarden sent on its own", () => {
    const st = statementsOf(records, "reprep-marker");
    expect(brief(st)).toEqual([
      "Parse:ok:-:-",
      "Bind:ok:-:-",
      "Execute:ok:-:SELECT 1",
      "Bind:ok:-:-",
      "Execute:ok:-:SELECT 1",
    ]);
    for (const r of st) expect(r.server).toMatch(/^s\d+$/);
    // The first execution ran on a different server connection from the Parse (the re-prepare path).
    expect(st[1]!.server).not.toBe(st[0]!.server);
  });
});
