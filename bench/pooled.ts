// --pooled: pgwarden against PgBouncer with the same pool mode and size, in one run.
//   1. pgbench -S at 50 and 500 clients, -M simple / extended / prepared: TPS and its ratio,
//      p50/p99 latency (from pgbench's per-transaction log), proxy CPU per transaction;
//   2. pgbench -S -C (a new connection per transaction) with both in session mode;
//   3. memory per idle client with 10,000 idle clients, each proxy a fresh process;
//   4. time to accept and authenticate 10,000 raw clients (startup to ReadyForQuery).
// See docs/benchmarks.md, "Pooled runs".

import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { holdIdleClients as holdRawClients } from "../test/support/idleSockets.ts";
import type { BenchOptions } from "./args.ts";
import { type MemoryResult, measureIdle } from "./memory.ts";
import { parsePgbenchOutput } from "./pgbench.ts";
import { startPgbouncer } from "./pgbouncer.ts";
import type { Postgres } from "./postgres.ts";
import { clockTicksPerSecond, cpuSecondsBetween, readCpuTicks } from "./proc.ts";
import { fmtRatio, quotient, table } from "./report.ts";
import { type Pool, type ProxyOptions, type Started, startPgwarden, type Target } from "./targets.ts";
import { cpuPerTransactionUs } from "./throughput.ts";
import { log, makeTempDir, removeTempDir, sleep, spawnChild } from "./util.ts";

export const POOLED_TARGETS = ["pgwarden", "pgbouncer"] as const;
export type PooledTarget = (typeof POOLED_TARGETS)[number];
export const POOLED_MODES = ["simple", "extended", "prepared"] as const;
export type PooledProtocol = (typeof POOLED_MODES)[number];
export const POOLED_CLIENTS = [50, 500] as const;
/** Idle clients for the memory and accept measurements. */
export const POOLED_IDLE = 10_000;
/** Clients of the -C run (one connection per transaction). */
const CONNECT_CLIENTS = 20;

export interface PgbenchFigures {
  readonly ok: boolean;
  readonly tps: number | undefined;
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  readonly cpuUsPerTx: number | undefined;
  readonly transactions: number | undefined;
  /** Error lines pgbench logged without counting a failed transaction (its prepare step). */
  readonly loggedErrors: number;
  readonly error: string | undefined;
}

export interface PooledRun extends PgbenchFigures {
  readonly target: PooledTarget;
  readonly clients: number;
  readonly protocol: PooledProtocol;
  /** -C: a new connection for every transaction. */
  readonly connect: boolean;
}

export interface AcceptResult {
  readonly target: PooledTarget;
  readonly clients: number;
  readonly accepted: number;
  readonly seconds: number | undefined;
  readonly error: string | undefined;
}

export interface PooledResult {
  readonly pool: Pool;
  readonly runs: readonly PooledRun[];
  readonly memory: readonly MemoryResult[];
  readonly accept: readonly AcceptResult[];
}

/** The q-quantile (0..1) of values by nearest rank; undefined for none. */
export function quantile(values: readonly number[], q: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** Latencies in µs from pgbench --log lines: `client transaction latency_us script epoch epoch_us`. */
export function parseTransactionLog(text: string): number[] {
  const out: number[] = [];
  for (const line of text.split("\n")) {
    const latency = Number(line.split(" ")[2]);
    if (line !== "" && Number.isFinite(latency)) out.push(latency);
  }
  return out;
}

async function pgbench(
  target: Target,
  run: { clients: number; protocol: PooledProtocol; connect: boolean; durationSec: number; log: boolean },
): Promise<PgbenchFigures> {
  const dir = makeTempDir("pgwarden-pooled-log-");
  const env: NodeJS.ProcessEnv = { ...process.env, PGSSLMODE: "disable", PGGSSENCMODE: "disable" };
  delete env.PGPASSWORD;
  if (target.password !== undefined) env.PGPASSWORD = target.password;
  // pgbench 15 prepares with a blocking call; one client per thread keeps a wait for a server
  // connection there from stalling the other clients of its thread.
  const threads = run.protocol === "prepared" ? run.clients : 2;
  const args = [
    "-n",
    "-S",
    "-M",
    run.protocol,
    "-c",
    String(run.clients),
    "-j",
    String(threads),
    "-T",
    String(run.durationSec),
    ...(run.connect ? ["-C"] : []),
    ...(run.log ? ["--log", `--log-prefix=${path.join(dir, "tx")}`] : []),
    "-h",
    target.host,
    "-p",
    String(target.port),
    "-U",
    target.user,
    "postgres",
  ];
  const before = target.pid === undefined ? undefined : readCpuTicks(target.pid);
  const child = spawnChild("pgbench", args, { env, cwd: dir });
  const watchdog = setTimeout(() => child.process.kill("SIGKILL"), (run.durationSec + 60) * 1000);
  await child.exited;
  clearTimeout(watchdog);
  const after = target.pid === undefined ? undefined : readCpuTicks(target.pid);
  const output = child.output();
  // With -C pgbench reports tps "including reconnection times" instead.
  const reconnecting = /^tps = ([\d.]+) \(including reconnection times\)/m.exec(output)?.[1];
  const base = parsePgbenchOutput(output);
  const parsed = {
    ...base,
    tps: base.tps ?? (reconnecting === undefined ? undefined : Number(reconnecting)),
  };
  let error: string | undefined;
  if (child.process.exitCode !== 0)
    error = `pgbench exited with ${child.process.exitCode ?? child.process.signalCode}`;
  else if (parsed.tps === undefined) error = "no tps line in pgbench output";
  else if ((parsed.failedTransactions ?? 0) > 0) error = `${parsed.failedTransactions} failed transactions`;
  if (error !== undefined) error += `\n${output.trim().split("\n").slice(-6).join("\n")}`;
  let latencies: number[] = [];
  if (run.log && error === undefined) {
    for (const f of readdirSync(dir))
      latencies = latencies.concat(parseTransactionLog(readFileSync(path.join(dir, f), "utf8")));
  }
  removeTempDir(dir);
  const cpu =
    before === undefined || after === undefined || error !== undefined
      ? undefined
      : cpuPerTransactionUs(cpuSecondsBetween(before, after, clockTicksPerSecond()), parsed.transactions);
  const ms = (us: number | undefined) => (us === undefined ? undefined : us / 1000);
  return {
    ok: error === undefined,
    tps: parsed.tps,
    p50Ms: ms(quantile(latencies, 0.5)),
    p99Ms: ms(quantile(latencies, 0.99)),
    cpuUsPerTx: cpu,
    transactions: parsed.transactions,
    loggedErrors: output.split("\n").filter((l) => /error/i.test(l)).length,
    error,
  };
}

function start(name: PooledTarget, server: Postgres, rootDir: string, proxy: ProxyOptions): Promise<Started> {
  return name === "pgwarden" ? startPgwarden(server, rootDir, proxy) : startPgbouncer(server, rootDir, proxy);
}

async function startAll(
  server: Postgres,
  rootDir: string,
  proxy: ProxyOptions,
  skipped: Map<PooledTarget, string>,
): Promise<Target[]> {
  const running: Target[] = [];
  for (const name of POOLED_TARGETS) {
    const started = await start(name, server, rootDir, proxy);
    if (started.ok) running.push(started.target);
    else {
      skipped.set(name, started.reason);
      log(`skipping ${name}: ${started.reason.split("\n")[0]}`);
    }
  }
  return running;
}

function describeRun(r: PooledRun): string {
  if (!r.ok) return `FAILED: ${r.error?.split("\n")[0]}`;
  return `${r.tps?.toFixed(0)} tps, p50 ${r.p50Ms?.toFixed(2)} ms, p99 ${r.p99Ms?.toFixed(2)} ms, CPU ${r.cpuUsPerTx?.toFixed(1)} µs/tx`;
}

/** The pgbench matrix with both proxies running side by side, interleaved per cell. */
async function runMatrix(
  options: BenchOptions,
  targets: readonly Target[],
  connect: boolean,
  clientsList: readonly number[],
  protocols: readonly PooledProtocol[],
  interrupted: () => boolean,
): Promise<PooledRun[]> {
  const runs: PooledRun[] = [];
  for (const clients of clientsList) {
    for (const protocol of protocols) {
      for (const target of targets) {
        if (interrupted()) throw new Error("interrupted");
        const base = { clients, protocol, connect };
        if (options.warmupSec > 0)
          await pgbench(target, { ...base, durationSec: options.warmupSec, log: false });
        const figures = await pgbench(target, { ...base, durationSec: options.durationSec, log: !connect });
        const run = { ...figures, ...base, target: target.name as PooledTarget };
        log(`${connect ? "-C " : ""}${protocol} ${clients} clients ${target.name}: ${describeRun(run)}`);
        runs.push(run);
      }
    }
  }
  return runs;
}

async function measureAccept(target: Target, count: number): Promise<AcceptResult> {
  const held = await holdRawClients({
    port: target.port,
    user: target.user,
    database: "postgres",
    count,
    concurrency: 500,
  });
  await held.close();
  return {
    target: target.name as PooledTarget,
    clients: count,
    accepted: held.clients.length,
    seconds: held.failures.length === 0 ? held.seconds : undefined,
    error: held.failures[0],
  };
}

export async function runPooled(
  options: BenchOptions,
  server: Postgres,
  rootDir: string,
  interrupted: () => boolean,
): Promise<PooledResult & { skipped: Record<string, string> }> {
  const pool: Pool = options.pool ?? { mode: "transaction", size: 20 };
  const maxClients = Math.max(POOLED_IDLE, ...POOLED_CLIENTS) + 500;
  const proxy: ProxyOptions = { maxClients, pool, tls: undefined, nodeFlags: options.nodeFlags };
  const skipped = new Map<PooledTarget, string>();
  const runs: PooledRun[] = [];

  let running = await startAll(server, rootDir, proxy, skipped);
  try {
    await sleep(1000);
    runs.push(...(await runMatrix(options, running, false, POOLED_CLIENTS, POOLED_MODES, interrupted)));
  } finally {
    for (const t of running) await t.stop().catch(() => {});
  }

  // -C pays a login per transaction; session mode is where reusing server connections matters.
  const session: ProxyOptions = { ...proxy, pool: { mode: "session", size: pool.size } };
  running = await startAll(server, rootDir, session, skipped);
  try {
    await sleep(1000);
    runs.push(...(await runMatrix(options, running, true, [CONNECT_CLIENTS], ["simple"], interrupted)));
  } finally {
    for (const t of running) await t.stop().catch(() => {});
  }

  const memory: MemoryResult[] = [];
  const accept: AcceptResult[] = [];
  for (const name of POOLED_TARGETS) {
    if (skipped.has(name) || interrupted()) continue;
    log(`${POOLED_IDLE} idle clients through a fresh ${name} ...`);
    const m = await measureIdle(name, POOLED_IDLE, async () => {
      const s = await start(name, server, rootDir, proxy);
      return s.ok ? s.target : { reason: s.reason };
    });
    log(
      `${name}: ${m.status}${m.perClientKiB === undefined ? "" : `, ${m.perClientKiB.toFixed(2)} KiB/client`}`,
    );
    memory.push(m);
    const s = await start(name, server, rootDir, proxy);
    if (!s.ok) continue;
    try {
      await sleep(1000);
      const a = await measureAccept(s.target, POOLED_IDLE);
      log(`${name}: ${a.accepted} clients accepted and authenticated in ${a.seconds?.toFixed(2) ?? "—"} s`);
      accept.push(a);
    } finally {
      await s.target.stop();
    }
  }
  return { pool, runs, memory, accept, skipped: Object.fromEntries(skipped) };
}

/** Goals of the pooling issue. */
export const POOLED_GOALS = {
  tpsVsPgbouncer: 1.0,
  connectVsPgbouncer: 0.8,
  idleKiB: 6,
  acceptSeconds: 2,
} as const;

const num = (v: number | undefined, digits: number) => (v === undefined ? "—" : v.toFixed(digits));

export function formatPooled(result: PooledResult): string {
  const find = (target: PooledTarget, r: PooledRun) =>
    result.runs.find(
      (x) =>
        x.target === target &&
        x.clients === r.clients &&
        x.protocol === r.protocol &&
        x.connect === r.connect,
    );
  const rows = result.runs.map((r) => {
    const reference = find("pgbouncer", r);
    return [
      r.connect ? `-C ${r.protocol}` : r.protocol,
      String(r.clients),
      r.target,
      r.ok ? num(r.tps, 0) : "FAILED",
      num(r.p50Ms, 2),
      num(r.p99Ms, 2),
      num(r.cpuUsPerTx, 1),
      r.target === "pgwarden" && r.ok && reference?.ok ? fmtRatio(quotient(r.tps, reference.tps)) : "—",
      r.target === "pgwarden" && r.ok && reference?.ok
        ? fmtRatio(quotient(r.cpuUsPerTx, reference.cpuUsPerTx))
        : "—",
    ];
  });
  const failures = result.runs
    .filter((r) => !r.ok)
    .map(
      (r) =>
        `${r.target} ${r.connect ? "-C " : ""}${r.protocol} ${r.clients}: ${r.error?.split("\n").slice(0, 2).join(" / ")}`,
    );
  const logged = result.runs
    .filter((r) => r.ok && r.loggedErrors > 0)
    .map(
      (r) =>
        `${r.target} ${r.protocol} ${r.clients}: pgbench logged ${r.loggedErrors} error lines (not failed transactions)`,
    );
  const memoryRows = result.memory.map((m) => [
    m.target,
    String(m.opened),
    m.status,
    num(m.perClientKiB, 2),
    num(m.perClientWarmKiB, 2),
    num(m.openSeconds, 2),
  ]);
  const acceptRows = result.accept.map((a) => [
    a.target,
    `${a.accepted}/${a.clients}`,
    num(a.seconds, 2),
    a.error ?? "",
  ]);
  return [
    `pooled: pgwarden and PgBouncer in ${result.pool.mode} mode, pool size ${result.pool.size} (-C runs in session mode)`,
    table(
      [
        "pgbench -S",
        "clients",
        "target",
        "TPS",
        "p50 ms",
        "p99 ms",
        "CPU µs/tx",
        "TPS vs PgBouncer",
        "CPU vs PgBouncer",
      ],
      rows,
    ),
    ...failures,
    ...logged,
    `goals: TPS ≥ ${POOLED_GOALS.tpsVsPgbouncer}× PgBouncer; -C ≥ ${POOLED_GOALS.connectVsPgbouncer}× PgBouncer`,
    "",
    `memory per idle client, ${POOLED_IDLE} clients, fresh process (goal ≤ ${POOLED_GOALS.idleKiB} KiB)`,
    table(
      ["target", "clients", "status", "KiB / client", "(after warm-up)", "open s (pg clients)"],
      memoryRows,
    ),
    "",
    `accept and authenticate ${POOLED_IDLE} raw clients, 500 at a time (goal ≤ ${POOLED_GOALS.acceptSeconds} s)`,
    table(["target", "accepted", "seconds", "error"], acceptRows),
  ].join("\n");
}
