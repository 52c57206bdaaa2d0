// The TLS part of a run (`--tls`): pgwarden and PgBouncer both terminating client TLS with the
// same pinned policy, checked per target with openssl s_client. Two workloads, interleaved in
// rounds: steady pgbench -S over long-lived TLS sessions (TPS, proxy CPU per transaction), and
// pgbench -C -S, one new TLS connection per transaction (connections per second, CPU per connection).
// Both proxies run in session mode and reuse server connections, so -C measures the front door.

import { execFileSync } from "node:child_process";
import { runPgbench } from "./pgbench.ts";
import { startPgbouncer } from "./pgbouncer.ts";
import type { Postgres } from "./postgres.ts";
import { clockTicksPerSecond, cpuSecondsBetween, readCpuTicks } from "./proc.ts";
import { fmtRatio, median, quotient, table } from "./report.ts";
import { type ProxyOptions, type Started, startPgwarden, TARGET_LABELS, type Target } from "./targets.ts";
import { cpuPerTransactionUs } from "./throughput.ts";
import { type Certificate, matchesPinned, type Negotiated, negotiatedBy, PINNED_TLS } from "./tls.ts";
import { log } from "./util.ts";

export const TLS_TARGETS = ["pgwarden", "pgbouncer"] as const;
export type TlsTarget = (typeof TLS_TARGETS)[number];

export const TLS_WORKLOADS = ["steady", "connect"] as const;
export type TlsWorkload = (typeof TLS_WORKLOADS)[number];

const WORKLOAD_LABELS: Record<TlsWorkload, string> = {
  steady: "pgbench -S, sessions kept (TPS)",
  connect: "pgbench -C -S, new TLS connection per transaction (connections/s)",
};

/** Goal from the front-door issue: pgwarden at least PgBouncer's rate on both workloads. */
export const TLS_GOAL_VS_PGBOUNCER = 1.0;

export interface TlsRound {
  readonly tps: number | undefined;
  readonly cpuUsPerTx: number | undefined;
  /** With -C: pgbench's average connection time. */
  readonly connectionMs: number | undefined;
  readonly error?: string;
}

export interface TlsCell {
  readonly target: TlsTarget;
  readonly workload: TlsWorkload;
  readonly rounds: readonly TlsRound[];
}

export interface Spread {
  readonly median: number | undefined;
  readonly min: number | undefined;
  readonly max: number | undefined;
}

export interface TlsOptions {
  readonly clients: number;
  readonly threads: number;
  readonly durationSec: number;
  readonly warmupSec: number;
  readonly rounds: number;
}

export interface TlsResult {
  readonly pinned: typeof PINNED_TLS;
  readonly negotiated: Partial<Record<TlsTarget, Negotiated>>;
  readonly skipped: Partial<Record<TlsTarget, string>>;
  readonly cells: readonly TlsCell[];
  /** `uptime` before and after the part: how busy the shared machine was. */
  readonly load: { readonly before: string; readonly after: string };
}

export function spread(values: readonly (number | undefined)[]): Spread {
  const xs = values.filter((v): v is number => v !== undefined);
  return {
    median: median(xs),
    min: xs.length ? Math.min(...xs) : undefined,
    max: xs.length ? Math.max(...xs) : undefined,
  };
}

/** pgwarden / PgBouncer within each round (the rounds interleave them), then their spread. */
export function pairedTlsRatio(
  cells: readonly TlsCell[],
  workload: TlsWorkload,
  metric: "tps" | "cpuUsPerTx",
): Spread & { readonly rounds: number[] } {
  const of = (target: TlsTarget) => cells.find((c) => c.target === target && c.workload === workload);
  const a = of("pgwarden");
  const b = of("pgbouncer");
  const rounds =
    a === undefined || b === undefined
      ? []
      : a.rounds.flatMap((r, i) => {
          const q = quotient(r[metric], b.rounds[i]?.[metric]);
          return q === undefined ? [] : [q];
        });
  return { ...spread(rounds), rounds };
}

export function loadAverage(): string {
  try {
    return execFileSync("uptime", { encoding: "utf8" }).trim();
  } catch {
    return "uptime unavailable";
  }
}

async function startTlsTarget(
  name: TlsTarget,
  server: Postgres,
  workDir: string,
  proxy: ProxyOptions,
): Promise<Started> {
  // Session mode with server-connection reuse on both: PgBouncer's default pool, pgwarden's default `pool`.
  const options = { ...proxy, pool: undefined };
  return name === "pgwarden"
    ? startPgwarden(server, workDir, options)
    : startPgbouncer(server, workDir, options);
}

async function measure(target: Target, options: TlsOptions, workload: TlsWorkload): Promise<TlsRound> {
  const base = {
    clients: options.clients,
    threads: options.threads,
    mode: "simple" as const,
    tls: true,
    connect: workload === "connect",
  };
  if (options.warmupSec > 0) {
    const warm = await runPgbench(target, { ...base, durationSec: options.warmupSec });
    if (warm.exitCode !== 0 || (warm.failedTransactions ?? 0) > 0) {
      return {
        tps: undefined,
        cpuUsPerTx: undefined,
        connectionMs: undefined,
        error: warm.error ?? "warm-up",
      };
    }
  }
  const before = target.pid === undefined ? undefined : readCpuTicks(target.pid);
  const result = await runPgbench(target, { ...base, durationSec: options.durationSec });
  if (!result.ok) {
    return {
      tps: undefined,
      cpuUsPerTx: undefined,
      connectionMs: undefined,
      error: result.error ?? "failed",
    };
  }
  const cpu =
    before === undefined || target.pid === undefined
      ? undefined
      : cpuPerTransactionUs(
          cpuSecondsBetween(before, readCpuTicks(target.pid), clockTicksPerSecond()),
          result.transactions,
        );
  return { tps: result.tps, cpuUsPerTx: cpu, connectionMs: result.connectionMs };
}

function describe(r: TlsRound, workload: TlsWorkload): string {
  if (r.error !== undefined) return `FAILED: ${r.error}`;
  const unit = workload === "connect" ? "conn/s" : "tps";
  const conn = r.connectionMs === undefined ? "" : `, connect ${r.connectionMs.toFixed(3)} ms`;
  const cpu = r.cpuUsPerTx === undefined ? "" : `, proxy CPU ${r.cpuUsPerTx.toFixed(1)} µs/tx`;
  return `${r.tps?.toFixed(0)} ${unit}${cpu}${conn}`;
}

export async function runTlsPart(
  options: TlsOptions,
  server: Postgres,
  workDir: string,
  proxy: ProxyOptions & { readonly tls: Certificate },
  interrupted: () => boolean,
): Promise<TlsResult> {
  const before = loadAverage();
  const running: Target[] = [];
  const skipped: Partial<Record<TlsTarget, string>> = {};
  const negotiated: Partial<Record<TlsTarget, Negotiated>> = {};
  const perCell = new Map<string, TlsRound[]>();
  try {
    for (const name of TLS_TARGETS) {
      const started = await startTlsTarget(name, server, workDir, proxy);
      if (!started.ok) {
        skipped[name] = started.reason;
        log(`TLS: skipping ${TARGET_LABELS[name]}: ${started.reason.split("\n")[0]}`);
        continue;
      }
      const got = await negotiatedBy(started.target.host, started.target.port);
      negotiated[name] = got;
      const summary = `${got.protocol ?? "?"} ${got.cipher ?? "?"} ${got.group ?? "?"}`;
      if (!matchesPinned(got)) {
        // Comparing different suites would measure OpenSSL, not the proxies.
        skipped[name] =
          `negotiated ${summary}${got.error ? ` (${got.error.split("\n")[0]})` : ""}, not the pinned policy`;
        log(`TLS: skipping ${TARGET_LABELS[name]}: ${skipped[name]}`);
        await started.target.stop();
        continue;
      }
      log(`TLS: ${TARGET_LABELS[name]} on port ${started.target.port} negotiates ${summary}`);
      running.push(started.target);
    }
    for (let round = 1; round <= options.rounds; round++) {
      for (const workload of TLS_WORKLOADS) {
        for (const target of running) {
          if (interrupted()) throw new Error("interrupted");
          const r = await measure(target, options, workload);
          log(
            `TLS round ${round}/${options.rounds} ${workload} ${TARGET_LABELS[target.name]}: ${describe(r, workload)}`,
          );
          const key = `${target.name}/${workload}`;
          perCell.set(key, [...(perCell.get(key) ?? []), r]);
        }
      }
    }
  } finally {
    for (const target of running) await target.stop().catch(() => {});
  }
  const cells: TlsCell[] = running.flatMap((t) =>
    TLS_WORKLOADS.map((workload) => ({
      target: t.name as TlsTarget,
      workload,
      rounds: perCell.get(`${t.name}/${workload}`) ?? [],
    })),
  );
  return { pinned: PINNED_TLS, negotiated, skipped, cells, load: { before, after: loadAverage() } };
}

const fmt = (v: number | undefined, digits = 0) => (v === undefined ? "—" : v.toFixed(digits));
const range = (s: Spread, digits = 0) =>
  s.median === undefined ? "—" : `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;

/** Whether a TLS run met the goal on both workloads; undefined when a ratio is missing. */
export function tlsGoalMet(result: TlsResult): boolean | undefined {
  const ratios = TLS_WORKLOADS.map((w) => pairedTlsRatio(result.cells, w, "tps").median);
  if (ratios.some((r) => r === undefined)) return undefined;
  return ratios.every((r) => (r ?? 0) >= TLS_GOAL_VS_PGBOUNCER);
}

export function formatTls(result: TlsResult, options: TlsOptions): string {
  const p = result.pinned;
  const lines = [
    `client TLS: pgbench sslmode=require -c ${options.clients} -j ${Math.min(options.threads, options.clients)}` +
      ` -T ${options.durationSec} (warm-up ${options.warmupSec} s), ${options.rounds} interleaved round(s);` +
      ` pinned ${p.version} ${p.ciphersuite} ${p.group}`,
  ];
  for (const name of TLS_TARGETS) {
    const n = result.negotiated[name];
    if (n) lines.push(`  ${TARGET_LABELS[name]} negotiated: ${n.protocol} ${n.cipher} ${n.group}`);
    const why = result.skipped[name];
    if (why) lines.push(`  skipped ${TARGET_LABELS[name]}: ${why.split("\n")[0]}`);
  }
  const rows: string[][] = [];
  for (const workload of TLS_WORKLOADS) {
    for (const cell of result.cells.filter((c) => c.workload === workload)) {
      const failed = cell.rounds.find((r) => r.error !== undefined);
      rows.push([
        workload,
        TARGET_LABELS[cell.target],
        failed ? `FAILED: ${failed.error?.split("\n")[0]}` : range(spread(cell.rounds.map((r) => r.tps))),
        range(spread(cell.rounds.map((r) => r.cpuUsPerTx)), 1),
        workload === "connect" ? range(spread(cell.rounds.map((r) => r.connectionMs)), 3) : "",
      ]);
    }
  }
  lines.push(
    table(["workload", "target", "tps median (min–max)", "proxy CPU µs/tx", "connect ms"], rows),
    "",
  );
  for (const workload of TLS_WORKLOADS) {
    const tps = pairedTlsRatio(result.cells, workload, "tps");
    const cpu = pairedTlsRatio(result.cells, workload, "cpuUsPerTx");
    const met = tps.median === undefined ? "n/a" : tps.median >= TLS_GOAL_VS_PGBOUNCER ? "met" : "NOT met";
    lines.push(
      `${WORKLOAD_LABELS[workload]}: pgwarden / PgBouncer ${fmtRatio(tps.median)}` +
        ` (rounds ${tps.rounds.map((r) => r.toFixed(2)).join(", ") || "—"}; goal >= ${TLS_GOAL_VS_PGBOUNCER.toFixed(1)}: ${met});` +
        ` CPU per transaction ${fmtRatio(cpu.median)} (rounds ${cpu.rounds.map((r) => r.toFixed(2)).join(", ") || "—"})`,
    );
  }
  lines.push(`load before: ${result.load.before}`, `load after:  ${result.load.after}`);
  return lines.join("\n");
}
