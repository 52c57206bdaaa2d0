#!/usr/bin/env -S node --max-semi-space-size=1 --no-maglev --no-concurrent-recompilation
// Entry for `pgwarden` and the npm scripts: it runs the bundle in dist/ when that is current,
// else the TypeScript sources directly (type stripping); bin/bundle.js says why. The compile cache keeps the stripped, compiled modules between starts, which saves
// both start time and about 20 MB of start memory; it lives in Node's default cache directory
// (or NODE_COMPILE_CACHE) and is only an optimisation: without it everything still works.
// The shebang caps V8's young generation at 1 MB (the audit pipeline's thread raises its own,
// src/audit/pipelineHeap.ts): the proxy allocates little per message, and
// the default semi-spaces grow to 16 MB while modules load and stay committed (≈ 30 MB of RSS).
// It also leaves out V8's mid tier (Maglev) and compiles TurboFan's code on the main thread:
// while the first thousand connections warm the code, the background compilers' malloc arenas
// grew by about 12 MB and kept it (half the RSS of 1,000 idle clients); TurboFan alone reaches the
// same steady-state CPU per transaction (docs/benchmarks.md, "2026-12-02, later").
import module from "node:module";

const cache = module.enableCompileCache?.();
// Worker threads (the audit pipeline's) read the cache directory only from their environment.
if (cache?.directory !== undefined && process.env.NODE_COMPILE_CACHE === undefined)
  process.env.NODE_COMPILE_CACHE = cache.directory;
const { freshBundle } = await import("./bundle.js");
const { run } = await import(freshBundle() ?? "../src/cli/main.ts");
run(process.argv.slice(2));
