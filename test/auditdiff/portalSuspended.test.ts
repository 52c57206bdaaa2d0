import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditedProxy } from "../auditwire/support.ts";
import { errorOf, msg, type PgSession, typesOf } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, statementsOf, viaProxy } from "./support.ts";

/**
 * Execute with a row limit: PostgreSQL answers each partial Execute with PortalSuspended (`s`),
 * not CommandComplete, and only the Execute that exhausts the portal gets the command tag. An
 * error while fetching belongs to the Execute that was fetching. The trail must attach the tag and
 * the error to the Execute the client saw them on, not to the first Execute of the group.
 */

const SQL = "SELECT g, 'suspend-marker' FROM generate_series(1, 3) g";
const FAILING = "SELECT 10 / (g - 2), 'suspend-fail-marker' FROM generate_series(1, 3) g";

const STEPS: readonly (readonly Buffer[])[] = [
  [msg.parse("", SQL), msg.bind(""), msg.execute("", 1), msg.execute("", 1), msg.execute("", 0), msg.sync()],
  [msg.parse("", FAILING), msg.bind(""), msg.execute("", 1), msg.execute("", 1), msg.sync()],
];

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

describe("Execute with a row limit (PortalSuspended)", () => {
  let proxy: AuditedProxy;
  let records: Rec[];
  let directView: string[] = [];
  let proxiedView: string[] = [];

  beforeAll(async () => {
    proxy = await auditedProxy({ statements: "full" });
    directView = await run(await direct());
    proxiedView = await run(await viaProxy(proxy));
    records = await closeAndRead(proxy);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("the client sees PostgreSQL's answers", () => {
    expect(directView).toEqual(["1 2 D s D s D C Z", "1 2 D s E Z 22012"]);
    expect(proxiedView).toEqual(directView);
  });

  it("the command tag is on the Execute that completed the portal", () => {
    const st = statementsOf(records, "suspend-marker").slice(0, 5);
    expect(brief(st)).toEqual([
      "Parse:ok:-:-",
      "Bind:ok:-:-",
      "Execute:ok:-:-",
      "Execute:ok:-:-",
      "Execute:ok:-:SELECT 1",
    ]);
  });

  it("the error is on the Execute that was fetching, not on the one that was suspended", () => {
    const st = statementsOf(records, "suspend-marker").slice(5);
    expect(st.map((r) => r.message)).toEqual(["Parse", "Bind", "Execute", "Execute"]);
    // The first Execute returned its row and PortalSuspended; the second failed.
    expect(st[2]).not.toMatchObject({ sqlstate: "22012" });
    expect(st[3]).toMatchObject({ outcome: "error", sqlstate: "22012" });
  });
});
