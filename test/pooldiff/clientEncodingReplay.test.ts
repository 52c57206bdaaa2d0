import { describe, expect, it } from "vitest";
import { setupDiff, simple } from "./harness.ts";

/**
 * One client switches client_encoding to LATIN1; the next client of that server connection has a
 * non-ASCII setting, which pgwarden's replay sends as UTF-8 while the server still reads LATIN1.
 */
const ctx = setupDiff("pd_encoding", { mode: "transaction", size: 1 });

describe("another client's client_encoding", () => {
  it("does not change the bytes of this client's replayed settings", async () => {
    const program = async (open: () => ReturnType<typeof ctx.pooled>) => {
      const [a, b] = [await open(), await open()];
      await simple(b, "SET search_path = 'café'");
      await simple(a, "SET client_encoding = 'LATIN1'");
      return simple(b, "SELECT current_setting('search_path'), length(current_setting('search_path'))");
    };
    // Direct PostgreSQL: B's connection never saw A's encoding; its search_path is still "café".
    const direct = await program(() => ctx.direct());
    expect(direct).toContain('D["\\"café\\"","6"]');
    expect(await program(() => ctx.pooled())).toEqual(direct);
  });
});
