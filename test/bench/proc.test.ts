import { spawn } from "node:child_process";
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  clockTicksPerSecond,
  cpuSecondsBetween,
  parseStatCpu,
  parseStatParent,
  parseStatusKiB,
  readCpuTicks,
  readRss,
} from "../../bench/proc.ts";

/** A /proc/PID/stat line with the given command name and utime/stime (fields 14 and 15). */
const statLine = (comm: string, utime: number, stime: number, ppid = 1): string =>
  `4242 (${comm}) S ${ppid} 4242 4242 0 -1 4194560 1203 0 0 0 ${utime} ${stime} 0 0 20 0 1 0 123 456789 789 18446744073709551615`;

describe("parseStatCpu", () => {
  it("reads fields 14 and 15, not their neighbours", () => {
    expect(parseStatCpu(statLine("node", 311, 77))).toEqual({ user: 311, system: 77 });
  });

  fcTest.prop([fc.string({ maxLength: 15 }), fc.nat(), fc.nat(), fc.nat()])(
    "survives any command name, including spaces and parentheses",
    (comm, utime, stime, ppid) => {
      const text = statLine(comm.replaceAll("\n", ""), utime, stime, ppid);
      expect(parseStatCpu(text)).toEqual({ user: utime, system: stime });
      expect(parseStatParent(text)).toBe(ppid);
    },
  );

  it("rejects a truncated line", () => {
    expect(() => parseStatCpu("4242 (node) S 1 4242")).toThrow(/malformed/);
  });
});

describe("parseStatusKiB", () => {
  const status =
    "Name:\tnode\nVmPeak:\t  999 kB\nVmRSS:\t  130720 kB\nRssAnon:\t   75000 kB\nRssFile:\t   55720 kB\n";
  it("picks the named field only", () => {
    expect(parseStatusKiB(status, "VmRSS")).toBe(130720);
    expect(parseStatusKiB(status, "RssAnon")).toBe(75000);
    expect(parseStatusKiB(status, "RssShmem")).toBeUndefined();
  });
});

describe("cpuSecondsBetween", () => {
  it("adds user and system deltas and divides by the tick rate", () => {
    expect(cpuSecondsBetween({ user: 100, system: 50 }, { user: 250, system: 80 }, 100)).toBeCloseTo(1.8);
  });
});

describe("reading a live process", () => {
  it("sees CPU time grow while a child spins, and its RSS", async () => {
    const program = 'process.stdout.write("go\\n"); const end = Date.now() + 600; while (Date.now() < end);';
    const child = spawn(process.execPath, ["-e", program], { stdio: ["ignore", "pipe", "ignore"] });
    await new Promise((r) => child.stdout.once("data", r));
    const pid = child.pid!;
    const before = readCpuTicks(pid);
    const rss = readRss(pid);
    expect(rss.total).toBeGreaterThan(1000);
    expect(rss.anon + rss.file).toBeLessThanOrEqual(rss.total + 1);
    await new Promise((r) => setTimeout(r, 300));
    const after = readCpuTicks(pid);
    await new Promise((r) => child.once("exit", r));
    // At least 0.1 s of the ~0.3 s the child spun between the samples.
    expect(cpuSecondsBetween(before, after, clockTicksPerSecond())).toBeGreaterThan(0.1);
  });
});
