// --memory: resident memory per idle client. For every (target, N) a fresh proxy process is
// started; its RSS is read once it listens and has settled, then N clients connect, complete
// authentication and sit idle, held by load-generator child processes; RSS is read again.

import { readFileSync } from "node:fs";
import path from "node:path";
import { IDLE_PASSWORD_ENV, type IdleClientsReport } from "./idleClients.ts";
import { type Rss, readRss } from "./proc.ts";
import { fmtRatio, quotient, table } from "./report.ts";
import { REPO_ROOT, TARGET_LABELS, type Target, type TargetName } from "./targets.ts";
import { type Child, sleep, spawnChild, stopChild } from "./util.ts";

/** Most sockets one load-generator process holds; the per-process open-file cap here is 20,000. */
export const CLIENTS_PER_GENERATOR = 5000;
/**
 * Above this many idle clients a target that opens one upstream connection per client (the relay,
 * pgwarden in session mode) is run in front of a PgBouncer session pool instead of PostgreSQL:
 * PgBouncer answers an idle login without a backend, so the count is not bounded by
 * max_connections (each backend costs PostgreSQL megabytes), and the proxy's own memory per
 * client does not depend on what answers its upstream logins.
 */
export const MAX_UNPOOLED_IDLE_CLIENTS = 1000;
/** Descriptors a proxy keeps for itself besides its clients' (listener, stdio, epoll, logs, …). */
const OWN_DESCRIPTORS = 200;

/** This process's hard cap on open files (children inherit it), from /proc/self/limits. */
export function openFilesCap(limits = readFileSync("/proc/self/limits", "utf8")): number {
  const line = limits.split("\n").find((l) => l.startsWith("Max open files"));
  const hard = line?.trim().split(/\s+/)[4];
  return hard === undefined || hard === "unlimited" ? Number.POSITIVE_INFINITY : Number(hard);
}

/**
 * Most idle clients a proxy with two descriptors per client (client and upstream socket) can
 * hold under the open-files cap: 9,900 under this machine's 20,000, so "10,000" is run as that.
 */
export function twoSocketCap(cap = openFilesCap()): number {
  return Math.floor((cap - OWN_DESCRIPTORS) / 2);
}
/** Connections opened and closed after the start reading, for the second (warm) baseline. */
const WARM_CONNECTIONS = 20;
const SETTLE_MS = 2000;

export type MemoryStatus = "measured" | "failed";

export interface MemoryResult {
  readonly target: TargetName;
  /** Clients opened for this measurement. */
  readonly requested: number;
  /** The --idle-clients count this result is reported under (for ratios); `requested` may be capped below it. */
  readonly row?: number;
  readonly status: MemoryStatus;
  readonly opened: number;
  /** RSS once the fresh process listens and has settled. */
  readonly startRss: Rss | undefined;
  /** RSS after WARM_CONNECTIONS clients came and went, before the N idle ones. */
  readonly warmRss: Rss | undefined;
  readonly loadedRss: Rss | undefined;
  /** (loaded − start) / opened, in KiB: the figure the goals are stated in. */
  readonly perClientKiB: number | undefined;
  /** (loaded − warm) / opened: without one-off costs of the first connection (code, upstream state). */
  readonly perClientWarmKiB: number | undefined;
  readonly openSeconds: number | undefined;
  readonly note: string | undefined;
}

/** Splits `count` clients over generator processes of at most `perProcess` each. */
export function shares(count: number, perProcess = CLIENTS_PER_GENERATOR): number[] {
  const processes = Math.ceil(count / perProcess);
  return Array.from(
    { length: processes },
    (_, i) => Math.floor(count / processes) + (i < count % processes ? 1 : 0),
  );
}

export function perClientKiB(before: Rss | undefined, after: Rss | undefined, clients: number) {
  return before === undefined || after === undefined || clients <= 0
    ? undefined
    : (after.total - before.total) / clients;
}

interface Held {
  readonly opened: number;
  readonly seconds: number;
  readonly error: string | undefined;
  release(): Promise<void>;
}

function generator(target: Target, count: number): { child: Child; opened: Promise<IdleClientsReport> } {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env[IDLE_PASSWORD_ENV];
  if (target.password !== undefined) env[IDLE_PASSWORD_ENV] = target.password;
  const script = path.join(REPO_ROOT, "bench", "idleClients.ts");
  const args = [script, "--host", target.host, "--port", String(target.port), "--user", target.user];
  const child = spawnChild(process.execPath, [...args, "--count", String(count)], { env });
  const opened = new Promise<IdleClientsReport>((resolve, reject) => {
    let buffered = "";
    child.process.stdout?.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = JSON.parse(buffered.slice(0, nl)) as IdleClientsReport;
        buffered = buffered.slice(nl + 1);
        if (line.event === "opened") resolve(line);
      }
    });
    void child.exited.then(() =>
      reject(new Error(`load generator exited early:\n${child.output().trim().slice(-2000)}`)),
    );
  });
  return { child, opened };
}

/** Opens `count` idle clients through the target from as many generator processes as needed. */
export async function holdIdleClients(target: Target, count: number): Promise<Held> {
  const started = performance.now();
  const running = shares(count).map((n) => generator(target, n));
  const reports = await Promise.allSettled(running.map((g) => g.opened));
  const seconds = (performance.now() - started) / 1000;
  let opened = 0;
  let error: string | undefined;
  for (const r of reports) {
    if (r.status === "rejected") error ??= String(r.reason instanceof Error ? r.reason.message : r.reason);
    else if (r.value.event === "opened") {
      opened += r.value.opened;
      error ??= r.value.error;
    }
  }
  return {
    opened,
    seconds,
    error,
    // Closing thousands of connections politely takes a while; allow it before SIGKILL.
    release: async () => {
      await Promise.all(running.map((g) => stopChild(g.child, 60_000)));
    },
  };
}

/** Why a target was not started. */
export interface NotStarted {
  readonly reason: string;
}

/**
 * Measures one fresh target at one client count. `start` must start a new process each call.
 */
export async function measureIdle(
  name: TargetName,
  count: number,
  start: () => Promise<Target | NotStarted>,
): Promise<MemoryResult> {
  const empty = { opened: 0, startRss: undefined, warmRss: undefined, loadedRss: undefined };
  const result = (fields: Partial<MemoryResult>): MemoryResult => ({
    target: name,
    requested: count,
    status: "failed",
    ...empty,
    perClientKiB: undefined,
    perClientWarmKiB: undefined,
    openSeconds: undefined,
    note: undefined,
    ...fields,
  });
  const target = await start();
  if ("reason" in target) {
    return result({ note: target.reason });
  }
  try {
    const pid = target.pid;
    if (pid === undefined) return result({ note: "no process to measure" });
    await sleep(SETTLE_MS);
    const startRss = readRss(pid);
    const warm = await holdIdleClients(target, WARM_CONNECTIONS);
    await warm.release();
    await sleep(SETTLE_MS / 2);
    const warmRss = readRss(pid);
    const held = await holdIdleClients(target, count);
    await sleep(SETTLE_MS);
    const loadedRss = readRss(pid);
    await held.release();
    const error = warm.error ?? held.error;
    return result({
      status: error === undefined && held.opened === count ? "measured" : "failed",
      opened: held.opened,
      startRss,
      warmRss,
      loadedRss,
      perClientKiB: perClientKiB(startRss, loadedRss, held.opened),
      perClientWarmKiB: perClientKiB(warmRss, loadedRss, held.opened),
      openSeconds: held.seconds,
      note: error,
    });
  } finally {
    await target.stop();
  }
}

const mib = (rss: Rss | undefined) => (rss === undefined ? "—" : (rss.total / 1024).toFixed(1));
const kib = (v: number | undefined) => (v === undefined ? "—" : v.toFixed(2));

export function formatMemory(results: readonly MemoryResult[]): string {
  const headers = [
    "target",
    "clients",
    "start RSS MiB",
    "(anon MiB)",
    "loaded MiB",
    "KiB / client",
    "(after warm-up)",
    "vs bare relay",
    "vs PgBouncer",
    "open s",
  ];
  const at = (name: TargetName, n: number) =>
    results.find((r) => r.target === name && (r.row ?? r.requested) === n && r.status === "measured");
  const rows = results.map((r) => {
    const measured = r.status === "measured";
    return [
      TARGET_LABELS[r.target],
      r.opened === r.requested ? String(r.requested) : `${r.opened}/${r.requested}`,
      mib(r.startRss),
      r.startRss === undefined ? "—" : (r.startRss.anon / 1024).toFixed(1),
      measured ? mib(r.loadedRss) : "FAILED",
      measured ? kib(r.perClientKiB) : "—",
      measured ? kib(r.perClientWarmKiB) : "—",
      measured ? fmtRatio(quotient(r.perClientKiB, at("relay", r.row ?? r.requested)?.perClientKiB)) : "—",
      measured
        ? fmtRatio(quotient(r.perClientKiB, at("pgbouncer", r.row ?? r.requested)?.perClientKiB))
        : "—",
      r.openSeconds === undefined ? "—" : r.openSeconds.toFixed(2),
    ];
  });
  const notes = results
    .filter((r) => r.note)
    .map((r) => `${TARGET_LABELS[r.target]} at ${r.requested}: ${r.status}: ${r.note?.split("\n")[0]}`);
  return [table(headers, rows), ...notes].join("\n");
}
