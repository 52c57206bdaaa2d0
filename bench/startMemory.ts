// --start-memory: where a freshly started pgwarden's resident memory goes. Each probe is a new
// Node process that imports some modules (or runs `serve`) and idles; its VmRSS is read from
// /proc after it settles. Differences between rows attribute the start RSS to Node itself,
// TypeScript type stripping, each dependency, pgwarden's own modules and V8's young generation.

import { mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { stringify } from "yaml";
import { type Rss, readRss } from "./proc.ts";
import { table } from "./report.ts";
import { PGWARDEN_ENTRY, REPO_ROOT } from "./targets.ts";
import { type Child, freePort, log, sleep, spawnChild, stopChild, waitForPort } from "./util.ts";

const SETTLE_MS = 3000;

export interface Probe {
  readonly label: string;
  /** Modules imported by `node --input-type=module -e`, or "serve" for a listening pgwarden. */
  readonly imports: readonly string[] | "serve";
  readonly nodeFlags?: readonly string[];
  /** Run once unmeasured first so NODE_COMPILE_CACHE is warm (cache dir per run). */
  readonly compileCache?: boolean;
}

/** What pgwarden imports from effect today (src/runtime/*.ts), as subpath imports. */
const EFFECT_SUBPATHS = [
  "effect/Effect",
  "effect/Schema",
  "effect/Deferred",
  "effect/FiberMap",
  "effect/Scope",
];

export const PROBES: readonly Probe[] = [
  { label: "node, nothing imported", imports: [] },
  { label: "node + type stripping (one empty .ts)", imports: ["./bench/empty.ts"] },
  { label: 'node + "effect" (barrel)', imports: ["effect"] },
  { label: "node + effect subpaths pgwarden uses", imports: EFFECT_SUBPATHS },
  { label: "node + xstate", imports: ["xstate"] },
  { label: "node + pino", imports: ["pino"] },
  { label: "node + yaml", imports: ["yaml"] },
  { label: "node + effect + xstate + pino + yaml", imports: ["effect", "xstate", "pino", "yaml"] },
  { label: "pgwarden src/runtime/Server.ts", imports: ["./src/runtime/Server.ts"] },
  { label: "pgwarden src/cli/main.ts", imports: ["./src/cli/main.ts"] },
  { label: "pgwarden serve, listening", imports: "serve" },
  { label: "serve, --max-semi-space-size=1", imports: "serve", nodeFlags: ["--max-semi-space-size=1"] },
  { label: "serve, --max-semi-space-size=2", imports: "serve", nodeFlags: ["--max-semi-space-size=2"] },
  { label: "serve, warm NODE_COMPILE_CACHE", imports: "serve", compileCache: true },
  {
    label: "serve, compile cache + semi-space 1",
    imports: "serve",
    nodeFlags: ["--max-semi-space-size=1"],
    compileCache: true,
  },
  { label: "main.ts, warm compile cache", imports: ["./src/cli/main.ts"], compileCache: true },
];

export interface ProbeResult {
  readonly label: string;
  readonly rss: Rss | undefined;
  readonly error: string | undefined;
}

/** The -e program of an import probe: import everything, say so, idle; SIGTERM exits cleanly. */
export function probeProgram(imports: readonly string[]): string {
  const body = imports.map((s) => `await import(${JSON.stringify(s)});`).join("");
  return `${body}process.on("SIGTERM",()=>process.exit(0));process.stdout.write("ready\\n");setInterval(()=>{},1<<30);`;
}

function waitForLine(child: Child, text: string, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(`no "${text}" within ${timeoutMs} ms`), timeoutMs);
    child.process.stdout?.on("data", () => {
      if (child.output().includes(text)) {
        clearTimeout(timer);
        resolve(undefined);
      }
    });
    void child.exited.then(() => {
      clearTimeout(timer);
      resolve(`exited early:\n${child.output().trim().slice(-1500)}`);
    });
  });
}

async function launch(probe: Probe, workDir: string, env: NodeJS.ProcessEnv) {
  const flags = probe.nodeFlags ?? [];
  if (probe.imports === "serve") {
    const port = await freePort();
    const configFile = path.join(workDir, `probe-${port}.yaml`);
    // The upstream is never contacted: nothing connects to this pgwarden.
    const config = {
      listen: { host: "127.0.0.1", port },
      upstream: { host: "127.0.0.1", port: 1 },
      auth: { method: "trust" },
      log: { level: "warn" },
    };
    writeFileSync(configFile, stringify(config), { mode: 0o600 });
    const child = spawnChild(process.execPath, [...flags, PGWARDEN_ENTRY, "serve", "--config", configFile], {
      cwd: REPO_ROOT,
      env,
    });
    return { child, problem: await waitForPort("127.0.0.1", port, 15_000, child.process) };
  }
  const args = [...flags, "--input-type=module", "-e", probeProgram(probe.imports)];
  const child = spawnChild(process.execPath, args, { cwd: REPO_ROOT, env });
  return { child, problem: await waitForLine(child, "ready", 15_000) };
}

export async function runProbe(probe: Probe, workDir: string): Promise<ProbeResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.NODE_COMPILE_CACHE;
  delete env.NODE_OPTIONS;
  if (probe.compileCache) {
    env.NODE_COMPILE_CACHE = mkdtempSync(path.join(workDir, "compile-cache-"));
    const fill = await launch(probe, workDir, env);
    // Node writes the compile cache on a clean exit; both kinds of probe exit cleanly on SIGTERM.
    await stopChild(fill.child, 10_000);
  }
  const { child, problem } = await launch(probe, workDir, env);
  try {
    if (problem) return { label: probe.label, rss: undefined, error: problem };
    await sleep(SETTLE_MS);
    const pid = child.process.pid;
    return { label: probe.label, rss: pid === undefined ? undefined : readRss(pid), error: undefined };
  } finally {
    await stopChild(child, 10_000);
  }
}

export async function runStartMemory(workDir: string): Promise<ProbeResult[]> {
  const results: ProbeResult[] = [];
  for (const probe of PROBES) {
    const r = await runProbe(probe, workDir);
    log(`${probe.label}: ${r.rss ? `${(r.rss.total / 1024).toFixed(1)} MiB` : `FAILED ${r.error}`}`);
    results.push(r);
  }
  return results;
}

export function formatStartMemory(results: readonly ProbeResult[]): string {
  const base = results[0]?.rss?.total;
  const mib = (kib: number | undefined) => (kib === undefined ? "—" : (kib / 1024).toFixed(1));
  const rows = results.map((r) => [
    r.label,
    r.rss ? mib(r.rss.total) : "FAILED",
    mib(r.rss?.anon),
    mib(r.rss?.file),
    r.rss && base !== undefined ? `+${mib(r.rss.total - base)}` : "—",
  ]);
  return table(["probe", "VmRSS MiB", "anon MiB", "file MiB", "over bare node"], rows);
}
