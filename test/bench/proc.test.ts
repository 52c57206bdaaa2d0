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
  it("sees the CPU time a child reports for itself, and its RSS", async () => {
    // Once the parent has read its starting figure (on a busy machine that can come well after
    // the child is ready), the child spins until it has used 300 ms of CPU (not wall time),
    // reports its own figure, and waits to be killed so /proc still has it.
    const program = `
      process.stdout.write("ready\\n");
      process.stdin.once("data", () => {
        const t0 = process.cpuUsage();
        const used = () => { const u = process.cpuUsage(t0); return (u.user + u.system) / 1e6; };
        while (used() < 0.3);
        process.stdout.write(used() + "\\n");
        setInterval(() => {}, 1000);
      });`;
    const child = spawn(process.execPath, ["-e", program], { stdio: ["pipe", "pipe", "ignore"] });
    try {
      let buffered = "";
      const next = () =>
        new Promise<string>((resolve) => {
          const take = () => {
            const nl = buffered.indexOf("\n");
            if (nl < 0) return false;
            resolve(buffered.slice(0, nl));
            buffered = buffered.slice(nl + 1);
            return true;
          };
          if (take()) return;
          const onData = (chunk: Buffer) => {
            buffered += chunk.toString("utf8");
            if (take()) child.stdout.off("data", onData);
          };
          child.stdout.on("data", onData);
        });
      await next(); // "ready"
      const pid = child.pid!;
      const before = readCpuTicks(pid);
      const rss = readRss(pid);
      expect(rss.total).toBeGreaterThan(1000);
      expect(rss.anon + rss.file).toBeLessThanOrEqual(rss.total + 1);
      child.stdin.write("go\n");
      const reported = Number(await next());
      const measured = cpuSecondsBetween(before, readCpuTicks(pid), clockTicksPerSecond());
      // /proc counts in ticks (10 ms): allow two ticks below, and above for the child's stdin wake-up.
      expect(measured).toBeGreaterThan(reported - 0.03);
      expect(measured).toBeLessThan(reported + 0.1);
    } finally {
      child.kill("SIGKILL");
    }
  });
});
