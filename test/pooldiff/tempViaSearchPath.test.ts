import { describe, expect, it } from "vitest";
import { setupDiff, simple } from "./harness.ts";

/** CREATE TABLE with pg_temp first in search_path makes a temporary table without saying TEMP. */
const ctx = setupDiff("pd_temp_sp", { mode: "transaction", size: 1 });

describe("a temporary table made through search_path", () => {
  it("is never seen by another client", async () => {
    const made =
      "SET search_path = pg_temp, public; CREATE TABLE sp_secret (v text); INSERT INTO sp_secret VALUES ('a only')";
    const probe =
      "SELECT count(*) FROM pg_class WHERE relname = 'sp_secret' AND relnamespace = pg_my_temp_schema()";
    // Direct PostgreSQL: the table is in A's own temporary schema; B's session has none of it.
    const [da, db] = [await ctx.direct(), await ctx.direct()];
    expect(await simple(da, made)).toContain("C:CREATE TABLE");
    const direct = await simple(db, probe);
    expect(direct).toContain('D["0"]');
    const a = await ctx.pooled();
    expect(await simple(a, made)).toContain("C:CREATE TABLE");
    // The session keeps its server connection (pinned) while it lives: the one server is free
    // again only once it has left, and it must not come back with A's table in it.
    a.terminate();
    const b = await ctx.pooled();
    expect(await simple(b, probe)).toEqual(direct);
  });
});
