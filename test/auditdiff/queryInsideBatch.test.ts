import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditedProxy } from "../auditwire/support.ts";
import { msg, type PgSession, type Reply, typesOf } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, statementsOf, viaProxy } from "./support.ts";

/**
 * A simple Query sent inside an unsynced extended batch (legal: PostgreSQL runs the batch so far,
 * then the Query, answering the Query with its own ReadyForQuery, then the Sync with another).
 * The trail must record the statements in the order PostgreSQL ran them, each with its own
 * command tag: the Execute's tag is not the Query's.
 */

const BATCH = [
  msg.parse("", "SELECT 'inside-ext-marker', g FROM generate_series(1, 3) g"),
  msg.bind(""),
  msg.execute(""),
  msg.query("SELECT 'inside-query' UNION ALL SELECT 'x'"),
  msg.sync(),
];

const run = async (s: PgSession): Promise<Reply[]> => {
  try {
    return await s.exchange(BATCH, 2, 5000);
  } finally {
    s.terminate();
  }
};

describe("a simple Query inside an extended batch", () => {
  let proxy: AuditedProxy;
  let records: Rec[];
  let directTypes = "";
  let proxiedTypes = "";

  beforeAll(async () => {
    proxy = await auditedProxy({ statements: "full" });
    directTypes = typesOf(await run(await direct()));
    proxiedTypes = typesOf(await run(await viaProxy(proxy)));
    records = await closeAndRead(proxy);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("the client gets PostgreSQL's answer through the proxy", () => {
    expect(directTypes).toBe("1 2 D D D C T D D C Z Z");
    expect(proxiedTypes).toBe(directTypes);
  });

  it("the records follow PostgreSQL's order and tags: Parse, Bind, Execute (SELECT 3), then Query (SELECT 2)", () => {
    const st = statementsOf(records, "inside-ext-marker");
    expect(brief(st)).toEqual([
      "Parse:ok:-:-",
      "Bind:ok:-:-",
      "Execute:ok:-:SELECT 3",
      "Query:ok:-:SELECT 2",
    ]);
  });
});

/**
 * The same shape after an error: PostgreSQL discards everything up to Sync, the Query among it
 * (no ReadyForQuery for it: test/hostile/queryIgnoredUntilSync). The discarded Query never ran,
 * so no record may say it ran or failed with the Execute's error, and the statements after the
 * batch must keep their own outcomes and tags.
 */
const SKIPPING = [msg.execute("no_such_portal"), msg.query("SELECT 'discarded-marker'"), msg.sync()];
const AFTER = ["SELECT 'after-one', 1", "SELECT 'after-two' UNION ALL SELECT 'x'"];

describe("a Query PostgreSQL skips inside a failed extended batch", () => {
  let proxy: AuditedProxy;
  let records: Rec[];
  const views: string[][] = [];

  const runSkipping = async (s: PgSession): Promise<string[]> => {
    try {
      const out = [typesOf(await s.exchange(SKIPPING, 1, 3000))];
      for (const q of AFTER) out.push(typesOf(await s.exchange([msg.query(q)], 1, 3000)));
      return out;
    } finally {
      s.terminate();
    }
  };

  beforeAll(async () => {
    proxy = await auditedProxy({ statements: "full" });
    views.push(await runSkipping(await direct()));
    views.push(await runSkipping(await viaProxy(proxy)));
    records = await closeAndRead(proxy);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("the client gets PostgreSQL's answers", () => {
    expect(views[0]).toEqual(["E Z", "T D C Z", "T D D C Z"]);
    expect(views[1]).toEqual(views[0]);
  });

  // On main the skipped Query takes the Execute's 34000, the Execute then takes 'after-one''s tag,
  // 'after-one' takes 'after-two''s, and 'after-two' is never recorded: off by one to the end.
  it("the Execute carries 34000, later statements keep their own tags, the skipped Query is not recorded as run or failed", () => {
    const st = records.filter(
      (r) => r.kind === "statement" && r.session === records.find((x) => x.message === "Execute")?.session,
    );
    const rest = st.filter((r) => !String(r.text ?? "").includes("discarded-marker"));
    expect(
      rest.map(
        (r) => `${r.message}:${r.outcome}:${r.sqlstate ?? "-"}:${r.commandTag ?? "-"}:${r.text ?? ""}`,
      ),
    ).toEqual([
      "Execute:error:34000:-:",
      `Query:ok:-:SELECT 1:${AFTER[0]}`,
      `Query:ok:-:SELECT 2:${AFTER[1]}`,
    ]);
    const discarded = st.filter((r) => String(r.text ?? "").includes("discarded-marker"));
    expect(brief(discarded.filter((r) => r.outcome === "ok" || r.sqlstate === "34000"))).toEqual([]);
  });
});
