// The pgbench part of a run: every target, both protocol modes, interleaved rounds; around each
// measured run the proxy's CPU time is sampled from /proc so it can be divided by transactions.

import type { BenchOptions } from "./args.ts";
import { type PgbenchResult, PROTOCOL_MODES, type ProtocolMode, runPgbench } from "./pgbench.ts";
import { clockTicksPerSecond, cpuSecondsBetween, readCpuTicks } from "./proc.ts";
import { type Measurement, median, type RoundResult } from "./report.ts";
import { TARGET_LABELS, type Target, type TargetName } from "./targets.ts";
import { log } from "./util.ts";

/** A pgbench result plus the proxy CPU time it cost, in microseconds per transaction. */
interface Sampled extends PgbenchResult {
  readonly cpuUsPerTx: number | undefined;
}

function describe(result: Sampled): string {
  if (!result.ok) return `FAILED: ${result.error}`;
  const cpu = result.cpuUsPerTx === undefined ? "" : `, proxy CPU ${result.cpuUsPerTx.toFixed(1)} µs/tx`;
  return `${result.tps?.toFixed(0)} tps, ${result.latencyMs?.toFixed(3)} ms${cpu}`;
}

/** CPU per transaction; undefined for a target without its own process (direct) or no transactions. */
export function cpuPerTransactionUs(
  cpuSeconds: number,
  transactions: number | undefined,
): number | undefined {
  if (transactions === undefined || transactions <= 0) return undefined;
  return (cpuSeconds * 1e6) / transactions;
}

async function sampledRun(target: Target, run: Parameters<typeof runPgbench>[1]): Promise<Sampled> {
  const pid = target.pid;
  const before = pid === undefined ? undefined : readCpuTicks(pid);
  const result = await runPgbench(target, run);
  if (pid === undefined || before === undefined || !result.ok) return { ...result, cpuUsPerTx: undefined };
  const seconds = cpuSecondsBetween(before, readCpuTicks(pid), clockTicksPerSecond());
  return { ...result, cpuUsPerTx: cpuPerTransactionUs(seconds, result.transactions) };
}

export async function runThroughput(
  options: BenchOptions,
  targets: readonly Target[],
  interrupted: () => boolean,
): Promise<Measurement[]> {
  const perKey = new Map<string, Sampled[]>();
  const base = { clients: options.clients, threads: options.threads, tls: options.clientTls };
  for (let round = 1; round <= options.rounds; round++) {
    for (const mode of PROTOCOL_MODES) {
      for (const target of targets) {
        if (interrupted()) throw new Error("interrupted");
        const key = `${target.name}/${mode}`;
        const list = perKey.get(key) ?? [];
        perKey.set(key, list);
        const where = `${options.rounds > 1 ? `round ${round}/${options.rounds} ` : ""}${mode} ${TARGET_LABELS[target.name]}`;
        if (options.warmupSec > 0) {
          const warm = await runPgbench(target, { ...base, mode, durationSec: options.warmupSec });
          // A warm-up only fails on a pgbench error; a short one on a busy machine may finish nothing.
          if (warm.exitCode !== 0 || (warm.failedTransactions ?? 0) > 0) {
            const failed = { ...warm, cpuUsPerTx: undefined };
            log(`${where}: warm-up ${describe(failed)}`);
            list.push(failed);
            continue;
          }
        }
        const result = await sampledRun(target, { ...base, mode, durationSec: options.durationSec });
        log(`${where}: ${describe(result)}`);
        list.push(result);
      }
    }
  }
  const measurements: Measurement[] = [];
  for (const target of targets) {
    for (const mode of PROTOCOL_MODES) {
      measurements.push(aggregate(target.name, mode, perKey.get(`${target.name}/${mode}`) ?? []));
    }
  }
  return measurements;
}

function aggregate(target: TargetName, mode: ProtocolMode, list: readonly Sampled[]): Measurement {
  const ok = list.length > 0 && list.every((r) => r.ok);
  const failure = list.find((r) => !r.ok);
  const cpu = list.flatMap((r) => (r.cpuUsPerTx === undefined ? [] : [r.cpuUsPerTx]));
  const rounds: RoundResult[] = list.map((r) => ({
    tps: r.tps,
    latencyMs: r.latencyMs,
    transactions: r.transactions,
    cpuUsPerTx: r.cpuUsPerTx,
    ...(r.error ? { error: r.error } : {}),
  }));
  return {
    target,
    mode,
    ok,
    tps: ok ? median(list.map((r) => r.tps ?? 0)) : undefined,
    latencyMs: ok ? median(list.map((r) => r.latencyMs ?? 0)) : undefined,
    cpuUsPerTx: ok && cpu.length === list.length ? median(cpu) : undefined,
    rounds,
    error: failure?.error,
  };
}
