import { fc } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import type { PoolSettings } from "../txpool/target.ts";
import { type DiffContext, setupDiff } from "./harness.ts";
import { program, runProgram, sanitizeProgram } from "./program.ts";

/**
 * Model-based differential test: random programs of three clients (settings, transactions,
 * savepoints, errors, named and unnamed extended-protocol batches, Describe, Close, some steps
 * concurrent) run once on dedicated PostgreSQL connections and once through a pool smaller than
 * the number of clients; every client must see exactly the same messages. Batches are sanitized
 * away from the shapes of the defects that this folder's fixed tests report.
 */

const CLIENTS = 3;

const property = (ctx: DiffContext, o: { transactions: boolean }, numRuns: number) =>
  fc.assert(
    fc.asyncProperty(
      program(CLIENTS, { errors: true, transactions: o.transactions, maxSteps: 20 }),
      async (g) => {
        const steps = sanitizeProgram(g, CLIENTS);
        const direct = await Promise.all(Array.from({ length: CLIENTS }, () => ctx.direct()));
        const pooled = await Promise.all(Array.from({ length: CLIENTS }, () => ctx.pooled()));
        try {
          const d = await runProgram(direct, steps);
          const p = await runProgram(pooled, steps);
          expect(p).toEqual(d);
        } finally {
          for (const s of [...direct, ...pooled]) s.terminate();
        }
      },
    ),
    { numRuns },
  );

const suite = (tag: string, pool: PoolSettings, o: { transactions: boolean }) =>
  describe(`${pool.mode} mode, pool of ${pool.size}`, () => {
    const ctx = setupDiff(tag, pool);
    it("every client observes what its own PostgreSQL connection would", () => property(ctx, o, 150), 60_000);
  });

suite("pd_model_t2", { mode: "transaction", size: 2 }, { transactions: true });
suite("pd_model_t1", { mode: "transaction", size: 1 }, { transactions: true });
suite("pd_model_s1", { mode: "statement", size: 1 }, { transactions: false });
