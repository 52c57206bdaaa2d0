// Reads a process's CPU time and resident memory from /proc (Linux only). The parsers are pure
// so they can be tested on fixed text; the readers are thin wrappers around them.

import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/** User and system CPU time of one process, in clock ticks (fields 14 and 15 of /proc/PID/stat). */
export interface CpuTicks {
  readonly user: number;
  readonly system: number;
}

/** Parses /proc/PID/stat. The command name (field 2) may contain spaces and parentheses. */
export function parseStatCpu(text: string): CpuTicks {
  // Fields after the last ")" start at field 3 (state), so field N is rest[N - 3].
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const user = Number(rest[14 - 3]);
  const system = Number(rest[15 - 3]);
  if (!Number.isInteger(user) || !Number.isInteger(system)) throw new Error("malformed /proc/PID/stat");
  return { user, system };
}

/** Parent pid (field 4 of /proc/PID/stat). */
export function parseStatParent(text: string): number {
  return Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[4 - 3]);
}

/** One `Name:   N kB` field of /proc/PID/status, in KiB; undefined when absent. */
export function parseStatusKiB(text: string, field: string): number | undefined {
  const match = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m").exec(text);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

export function readCpuTicks(pid: number): CpuTicks {
  return parseStatCpu(readFileSync(`/proc/${pid}/stat`, "utf8"));
}

let ticksPerSecond: number | undefined;

/** The kernel's clock tick rate for /proc CPU times (`getconf CLK_TCK`, nearly always 100). */
export function clockTicksPerSecond(): number {
  if (ticksPerSecond === undefined) {
    const value = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    if (!Number.isInteger(value) || value <= 0) throw new Error(`getconf CLK_TCK gave "${value}"`);
    ticksPerSecond = value;
  }
  return ticksPerSecond;
}

/** CPU seconds a process spent between two samples, user plus system. */
export function cpuSecondsBetween(before: CpuTicks, after: CpuTicks, hz: number): number {
  return (after.user - before.user + (after.system - before.system)) / hz;
}

/** Resident memory of one process, split the way /proc/PID/status reports it (KiB). */
export interface Rss {
  readonly total: number;
  /** Private anonymous pages: heap, stacks, V8 spaces. */
  readonly anon: number;
  /** File-backed pages (the node binary, libraries), shared with other processes using them. */
  readonly file: number;
}

export function readRss(pid: number): Rss {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const total = parseStatusKiB(status, "VmRSS");
  if (total === undefined) throw new Error(`no VmRSS for pid ${pid} (exited?)`);
  return {
    total,
    anon: parseStatusKiB(status, "RssAnon") ?? 0,
    file: parseStatusKiB(status, "RssFile") ?? 0,
  };
}

function childPids(pid: number): number[] {
  const result: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (parseStatParent(readFileSync(`/proc/${entry}/stat`, "utf8")) === pid) result.push(Number(entry));
    } catch {
      // process vanished
    }
  }
  return result;
}

/** VmRSS in KiB of a process and all its descendants (0 for a process that is gone). */
export function treeRssKiB(pid: number): number {
  let total = 0;
  const pending = [pid];
  while (pending.length > 0) {
    const current = pending.pop()!;
    try {
      total += readRss(current).total;
    } catch {
      continue;
    }
    pending.push(...childPids(current));
  }
  return total;
}
