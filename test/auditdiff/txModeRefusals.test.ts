import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditedProxy } from "../auditwire/support.ts";
import { errorOf, msg, type PgSession, typesOf } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, statementsOf, viaProxy } from "./support.ts";

/**
 * Transaction mode maps prepared statements itself, so some errors never come from PostgreSQL:
 * pgwarden answers a duplicate statement name (42P05) or a Bind of an unknown one (26000) with
 * its own ErrorResponse, as PostgreSQL would. The trail must record those requests with the
 * SQLSTATE the client got, not as successes, and not lose them. The same sequence sent straight to
 * PostgreSQL gives the client's expected view.
 */

const STEPS: readonly (readonly Buffer[])[] = [
  [msg.parse("s1", "SELECT 'txref-marker'"), msg.sync()],
  [msg.parse("s1", "SELECT 'txref-dup'"), msg.sync()],
  [msg.bind("nosuch"), msg.execute(""), msg.sync()],
  [msg.parse("s1", "SELECT 'txref-dup2'"), msg.bind("s1"), msg.execute(""), msg.sync()],
  [msg.bind("s1"), msg.execute(""), msg.sync()],
];

/** Per step: reply types and the SQLSTATE, if any. */
const run = async (s: PgSession): Promise<string[]> => {
  const out: string[] = [];
  try {
    for (const step of STEPS) {
      const r = await s.exchange(step, 1, 5000);
      const e = r.find((m) => m.type === "E");
      out.push(`${typesOf(r)}${e === undefined ? "" : ` ${errorOf(e).code}`}`);
    }
  } finally {
    s.terminate();
  }
  return out;
};

/** All the steps in one write (with another marker), as a pipelining driver sends them. */
const pipelined = async (s: PgSession): Promise<string> => {
  try {
    const steps = STEPS.map((st, i) =>
      i === 0 ? [msg.parse("s1", "SELECT 'txref-pipe-marker'"), msg.sync()] : st,
    );
    const r = await s.exchange(steps.flat(), steps.length, 5000);
    return r.map((m) => (m.type === "E" ? `E${errorOf(m).code}` : m.type)).join(" ");
  } finally {
    s.terminate();
  }
};

describe("transaction mode: requests pgwarden refuses itself are recorded with their SQLSTATE", () => {
  let proxy: AuditedProxy;
  let records: Rec[];
  let directView: string[] = [];
  let proxiedView: string[] = [];
  let pipelinedDirect = "";
  let pipelinedProxied = "";

  beforeAll(async () => {
    proxy = await auditedProxy({ statements: "full" }, { pool: { mode: "transaction", size: 2 } });
    directView = await run(await direct());
    proxiedView = await run(await viaProxy(proxy));
    pipelinedDirect = await pipelined(await direct());
    pipelinedProxied = await pipelined(await viaProxy(proxy));
    records = await closeAndRead(proxy);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("the client sees PostgreSQL's answers", () => {
    expect(directView).toEqual(["1 Z", "E Z 42P05", "E Z 26000", "E Z 42P05", "2 D C Z"]);
    expect(proxiedView).toEqual(directView);
  });

  it("each refused request is recorded once, with the SQLSTATE the client got", () => {
    const st = statementsOf(records, "txref-marker");
    expect(brief(st)).toEqual([
      "Parse:ok:-:-",
      "Parse:error:42P05:-",
      // Without BindComplete the error goes to the group's Execute (docs/audit.md); the Bind is marked error.
      "Bind:error:-:-",
      "Execute:error:26000:-",
      "Parse:error:-:-",
      "Bind:error:-:-",
      "Execute:error:42P05:-",
      "Bind:ok:-:-",
      "Execute:ok:-:SELECT 1",
    ]);
  });

  it("pipelined in one write: the client sees PostgreSQL's answers, and the records are the same", () => {
    expect(pipelinedDirect).toBe("1 Z E42P05 Z E26000 Z E42P05 Z 2 D C Z");
    expect(pipelinedProxied).toBe(pipelinedDirect);
    expect(brief(statementsOf(records, "txref-pipe-marker"))).toEqual(
      brief(statementsOf(records, "txref-marker")),
    );
  });
});
