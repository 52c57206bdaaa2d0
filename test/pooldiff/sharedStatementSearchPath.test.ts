import { describe, expect, it } from "vitest";
import { exchange, msg, setupDiff, simple } from "./harness.ts";

/**
 * Schema-per-tenant: two clients prepare the same text under different search_paths. pgwarden
 * shares one server statement per text, so the second client reuses a plan made for the first.
 */
const ctx = setupDiff("pd_shared_sp", { mode: "transaction", size: 1 });

describe("a shared server statement under another search_path", () => {
  it("answers each client from its own schema", async () => {
    const role = ctx.fixture.roles[0];
    await ctx.admin(
      `CREATE SCHEMA ta; CREATE SCHEMA tb; CREATE TABLE ta.t (v int); CREATE TABLE tb.t (v text, w text);
       INSERT INTO ta.t VALUES (1); INSERT INTO tb.t VALUES ('b', 'w');
       GRANT USAGE ON SCHEMA ta, tb TO ${role}; GRANT SELECT ON ta.t, tb.t TO ${role}`,
    );
    const program = async (open: () => ReturnType<typeof ctx.pooled>) => {
      const [a, b] = [await open(), await open()];
      await simple(a, "SET search_path = ta");
      await simple(b, "SET search_path = tb");
      const run = [msg.parse("q", "SELECT * FROM t"), msg.bind("q"), msg.execute(), msg.sync()];
      return [await exchange(a, run), await exchange(b, run)];
    };
    // Direct PostgreSQL: each connection plans against its own schema (B gets its two text columns).
    const direct = await program(() => ctx.direct());
    expect(direct[1]).toEqual(["1", "2", 'D["b","w"]', "C:SELECT 1", "Z:I"]);
    expect(await program(() => ctx.pooled())).toEqual(direct);
  });

  it("answers each client from its own schema when its SET is pipelined before the Parse", async () => {
    // Both schemas exist from the case above. The SET and the Parse go in one write: when pgwarden
    // reads the Parse, the SET's answer (and PostgreSQL's report of search_path) has not come yet.
    const program = async (open: () => ReturnType<typeof ctx.pooled>) => {
      const [a, b] = [await open(), await open()];
      const run = [msg.parse("q2", "SELECT * FROM t"), msg.bind("q2"), msg.execute(), msg.sync()];
      const first = await exchange(a, [msg.query("SET search_path = ta"), ...run], 2);
      const second = await exchange(b, [msg.query("SET search_path = tb"), ...run], 2);
      return [first, second];
    };
    const direct = await program(() => ctx.direct());
    expect(direct[1]).toContain('D["b","w"]');
    expect(await program(() => ctx.pooled())).toEqual(direct);
  });
});
