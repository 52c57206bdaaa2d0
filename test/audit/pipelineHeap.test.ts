import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { semiSpaceFlag } from "../../src/audit/pipelineHeap.ts";

describe("the audit pipeline thread's young generation", () => {
  it("reads the semi-space cap from NODE_OPTIONS and the command line, the command line last", () => {
    expect(semiSpaceFlag([], undefined)).toBeUndefined();
    expect(semiSpaceFlag(["--no-maglev", "--max-semi-space-size=1"], undefined)).toBe(1);
    expect(semiSpaceFlag(["--max_semi_space_size=2"], "--max-semi-space-size=8")).toBe(2);
    expect(semiSpaceFlag([], "--inspect  --max-semi-space-size=8")).toBe(8);
    expect(semiSpaceFlag(["--max-semi-space-size"], undefined)).toBeUndefined();
  });

  // A child with the shipped cap: a worker that keeps a rolling window of live strings reports
  // its new space, and the parent then does the same work on its own heap.
  const newSpaces = (wrapped: boolean): { worker: number; after: number; main: number } => {
    const heap = fileURLToPath(new URL("../../src/audit/pipelineHeap.ts", import.meta.url));
    const script = `
      import { Worker } from "node:worker_threads";
      import { withPipelineYoungGeneration } from ${JSON.stringify(heap)};
      const churn = "let keep = []; for (let i = 0; i < 200000; i++) { keep.push('x'.repeat(64) + i); if (keep.length > 20000) keep = keep.slice(10000); }" +
        "const v8 = process.getBuiltinModule('node:v8'); v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size";
      const make = () => new Worker("process.getBuiltinModule('node:worker_threads').parentPort.postMessage(eval(" + JSON.stringify(churn) + ")); setInterval(() => {}, 60000)", { eval: true });
      const w = ${wrapped ? "withPipelineYoungGeneration(make)" : "make()"};
      w.on("error", (e) => { console.error(e); process.exit(1); });
      w.on("message", (worker) => {
        // A worker made while it still runs, without the wrapper: the flag was put back once the
        // pipeline's worker came online, for every isolate made after.
        const later = make();
        later.on("message", async (after) => {
          await Promise.all([w.terminate(), later.terminate()]);
          console.log(JSON.stringify({ worker, after, main: eval(churn) }));
        });
      });`;
    const out = execFileSync(
      process.execPath,
      ["--max-semi-space-size=1", "--input-type=module", "-e", script],
      { encoding: "utf8", timeout: 60_000 },
    );
    return JSON.parse(out) as { worker: number; after: number; main: number };
  };

  it("is raised for the pipeline's worker only, under pgwarden's shipped cap", () => {
    const MiB = 1024 * 1024;
    const wrapped = newSpaces(true);
    expect(wrapped.worker).toBeGreaterThan(16 * MiB);
    // The flag is put back once the worker runs: an isolate made later gets the cap again (the
    // proxy's own heap was sized before, and keeps its cap in any case).
    expect(wrapped.after).toBeLessThanOrEqual(8 * MiB);
    expect(wrapped.main).toBeLessThanOrEqual(8 * MiB);
    // Without the wrapper the worker gets the cap too (what this guards against).
    expect(newSpaces(false).worker).toBeLessThanOrEqual(8 * MiB);
  });
});
