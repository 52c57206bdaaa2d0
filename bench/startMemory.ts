// --start-memory: where a freshly started pgwarden's resident memory goes. Each probe is a new
// Node process that imports some modules (or runs `serve`) and idles; its VmRSS is read from
// /proc after it settles. Differences between rows attribute the start RSS to Node itself,
// TypeScript type stripping, each dependency, pgwarden's own modules and V8's young generation.

import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { stringify } from "yaml";
import { ensureEmbeddedAuditKeys } from "../src/audit/openPipeline.ts";
import { type Rss, readRss } from "./proc.ts";
import { table } from "./report.ts";
import { PGWARDEN_ENTRY, REPO_ROOT, SHIPPED_NODE_FLAGS } from "./targets.ts";
import { makeCertificate } from "./tls.ts";
import { type Child, freePort, log, sleep, spawnChild, stopChild, waitForPort } from "./util.ts";

const SETTLE_MS = 3000;

export interface Probe {
  readonly label: string;
  /**
   * Modules imported by `node --input-type=module -e`; "serve" for a listening pgwarden with the
   * probe configuration (`config` adds sections to it); "embedded" for `serve` without a config
   * file, as `npm start` runs it: an embedded PostgreSQL, client TLS required, audit on.
   */
  readonly imports: readonly string[] | "serve" | "embedded";
  readonly nodeFlags?: readonly string[];
  /**
   * Run once unmeasured first so the compile cache is warm (cache dir per run). Without it the
   * cache is switched off (NODE_DISABLE_COMPILE_CACHE), since the entry enables it by default.
   */
  readonly compileCache?: boolean;
  /** Run pgwarden's TypeScript sources instead of its bundle (PGWARDEN_SOURCES=1, see bin/bundle.js). */
  readonly sources?: boolean;
  /** Sections merged into the serve configuration, made in the probe's own directory. */
  readonly config?: (dir: string) => Promise<Record<string, unknown>>;
}

/** Client TLS required, with a certificate of its own. */
const tlsRequired = async (dir: string) => {
  const cert = makeCertificate(path.join(dir, "tls"));
  return { tls: { mode: "require", cert: cert.certFile, key: cert.keyFile } };
};

/** The audit trail as the embedded default writes it: local segments, HMAC and signatures. */
const auditOn = async (dir: string) => {
  const keys = await ensureEmbeddedAuditKeys(path.join(dir, "audit-keys"));
  return {
    audit: {
      dir: path.join(dir, "audit"),
      hmacKeyFile: keys.hmacKeyFile,
      signing: { pemFile: keys.signingKeyFile },
    },
  };
};

/** What pgwarden imports from effect today (src/runtime/*.ts), as subpath imports. */
const EFFECT_SUBPATHS = [
  "effect/Effect",
  "effect/Schema",
  "effect/Deferred",
  "effect/FiberMap",
  "effect/Scope",
];

const SHIPPED = { nodeFlags: SHIPPED_NODE_FLAGS, compileCache: true } as const;

export const PROBES: readonly Probe[] = [
  { label: "node, nothing imported", imports: [] },
  { label: "node + type stripping (one empty .ts)", imports: ["./bench/empty.ts"] },
  { label: 'node + "effect" (barrel)', imports: ["effect"] },
  { label: "node + effect subpaths pgwarden uses", imports: EFFECT_SUBPATHS },
  { label: "node + xstate", imports: ["xstate"] },
  { label: "node + pino", imports: ["pino"] },
  { label: "node + yaml", imports: ["yaml"] },
  { label: "node + node:tls", imports: ["node:tls"] },
  { label: "node + effect + xstate + pino + yaml", imports: ["effect", "xstate", "pino", "yaml"] },
  { label: "pgwarden src/runtime/Server.ts", imports: ["./src/runtime/Server.ts"] },
  { label: "pgwarden src/cli/main.ts", imports: ["./src/cli/main.ts"] },
  { label: "main.ts, warm compile cache", imports: ["./src/cli/main.ts"], compileCache: true },
  { label: "serve (sources), no compile cache, default flags", imports: "serve", sources: true },
  {
    label: "serve (sources), --max-semi-space-size=1",
    imports: "serve",
    sources: true,
    nodeFlags: ["--max-semi-space-size=1"],
  },
  { label: "serve (sources), warm compile cache", imports: "serve", sources: true, compileCache: true },
  {
    label: "serve (sources) with the shipped flags, warm cache",
    imports: "serve",
    sources: true,
    ...SHIPPED,
  },
  {
    label: `serve as shipped (bundle, ${SHIPPED_NODE_FLAGS.join(" ")}, warm cache)`,
    imports: "serve",
    ...SHIPPED,
  },
  { label: "  + client TLS required", imports: "serve", ...SHIPPED, config: tlsRequired },
  { label: "  + audit", imports: "serve", ...SHIPPED, config: auditOn },
  {
    label: "  + client TLS required + audit",
    imports: "serve",
    ...SHIPPED,
    config: async (dir) => ({ ...(await tlsRequired(dir)), ...(await auditOn(dir)) }),
  },
  { label: "npm start: embedded PostgreSQL, TLS, audit", imports: "embedded", ...SHIPPED },
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

async function launch(probe: Probe, dir: string, env: NodeJS.ProcessEnv) {
  const flags = probe.nodeFlags ?? [];
  if (probe.imports === "embedded") {
    // As root, PostgreSQL runs as `postgres`, who must be able to enter the temp dirs.
    chmodSync(path.dirname(dir), 0o755);
    chmodSync(dir, 0o755);
    const port = await freePort();
    // The data directory is kept between the unmeasured and the measured run: initdb happens once.
    const args = [...flags, PGWARDEN_ENTRY, "serve", "--data-dir", path.join(dir, "embedded")];
    const child = spawnChild(process.execPath, [...args, "--listen", `127.0.0.1:${port}`], {
      cwd: REPO_ROOT,
      env,
    });
    const problem = await waitForPort("127.0.0.1", port, EMBEDDED_START_MS, child.process);
    return { child, problem: problem && `${problem}:\n${child.output().trim().slice(-1500)}` };
  }
  if (probe.imports === "serve") {
    const port = await freePort();
    const configFile = path.join(dir, `probe-${port}.yaml`);
    // The upstream is never contacted: nothing connects to this pgwarden.
    const config = {
      listen: { host: "127.0.0.1", port },
      upstream: { host: "127.0.0.1", port: 1 },
      auth: { method: "trust" },
      log: { level: "warn" },
      ...(probe.config === undefined ? {} : await probe.config(dir)),
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

/** initdb and the first start of the embedded PostgreSQL take a while on a busy machine. */
const EMBEDDED_START_MS = 120_000;

export async function runProbe(probe: Probe, workDir: string): Promise<ProbeResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.NODE_COMPILE_CACHE;
  delete env.NODE_OPTIONS;
  if (probe.sources) env.PGWARDEN_SOURCES = "1";
  else delete env.PGWARDEN_SOURCES;
  const dir = mkdtempSync(path.join(workDir, "probe-"));
  if (probe.compileCache) {
    env.NODE_COMPILE_CACHE = path.join(dir, "compile-cache");
    const fill = await launch(probe, dir, env);
    // Node writes the compile cache on a clean exit; every kind of probe exits cleanly on SIGTERM.
    await stopChild(fill.child, 30_000);
  } else env.NODE_DISABLE_COMPILE_CACHE = "1";
  const { child, problem } = await launch(probe, dir, env);
  try {
    if (problem) return { label: probe.label, rss: undefined, error: problem };
    await sleep(SETTLE_MS);
    const pid = child.process.pid;
    return { label: probe.label, rss: pid === undefined ? undefined : readRss(pid), error: undefined };
  } finally {
    await stopChild(child, 30_000);
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
