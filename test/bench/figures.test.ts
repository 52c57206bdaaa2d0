import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseBenchArgs } from "../../bench/args.ts";
import { openFilesCap, perClientKiB, shares, twoSocketCap } from "../../bench/memory.ts";
import { parsePgbenchOutput } from "../../bench/pgbench.ts";
import { type Measurement, pairedRatio, ratio, summarize } from "../../bench/report.ts";
import { maxConnectionsFor } from "../../bench/run.ts";
import { probeProgram } from "../../bench/startMemory.ts";
import { pgwardenConfig } from "../../bench/targets.ts";
import { cpuPerTransactionUs } from "../../bench/throughput.ts";

const PGBENCH_15 = `pgbench (15.14 (Debian 15.14-0+deb12u1), server 18.4)
transaction type: <builtin: select only>
scaling factor: 1
query mode: extended
number of clients: 20
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 102431
number of failed transactions: 0 (0.000%)
latency average = 0.976 ms
initial connection time = 21.042 ms
tps = 20494.114 (without initial connection time)
`;

describe("parsePgbenchOutput", () => {
  it("reads tps, latency, processed and failed transactions", () => {
    expect(parsePgbenchOutput(PGBENCH_15)).toEqual({
      tps: 20494.114,
      latencyMs: 0.976,
      failedTransactions: 0,
      transactions: 102431,
    });
  });
  it("leaves a missing line undefined", () => {
    expect(parsePgbenchOutput("tps = 5.0 (without initial connection time)\n").transactions).toBeUndefined();
  });
});

describe("cpuPerTransactionUs", () => {
  it("is CPU seconds over transactions, in microseconds", () => {
    expect(cpuPerTransactionUs(2.05, 102431)).toBeCloseTo(20.01, 1);
  });
  it("is undefined without transactions", () => {
    expect(cpuPerTransactionUs(1, 0)).toBeUndefined();
    expect(cpuPerTransactionUs(1, undefined)).toBeUndefined();
  });
});

const m = (target: Measurement["target"], rounds: [number, number][]): Measurement => ({
  target,
  mode: "simple",
  ok: true,
  tps: rounds[Math.floor(rounds.length / 2)]?.[0],
  latencyMs: 1,
  cpuUsPerTx: rounds[Math.floor(rounds.length / 2)]?.[1],
  rounds: rounds.map(([tps, cpu]) => ({ tps, latencyMs: 1, transactions: 1, cpuUsPerTx: cpu })),
  error: undefined,
});

describe("ratios", () => {
  const results = [
    m("pgwarden", [
      [90, 22],
      [100, 20],
      [80, 30],
    ]),
    m("relay", [
      [100, 20],
      [100, 20],
      [100, 20],
    ]),
  ];
  it("pairs rounds and takes the median of per-round ratios", () => {
    const p = pairedRatio(results, "simple", "pgwarden", "relay", "cpuUsPerTx");
    expect(p.rounds).toEqual([1.1, 1, 1.5]);
    expect(p.median).toBe(1.1);
  });
  it("compares CPU per transaction the same way as TPS", () => {
    expect(ratio(results, "simple", "pgwarden", "relay", "cpuUsPerTx")).toBe(1);
    expect(summarize(results).pairedCpuVsRelay.simple).toBe(1.1);
    expect(ratio(results, "simple", "pgwarden", "pgbouncer", "cpuUsPerTx")).toBeUndefined();
  });
});

describe("idle-client memory", () => {
  it("splits clients over generators so none holds more than its share", () => {
    expect(shares(1000)).toEqual([1000]);
    expect(shares(10000)).toEqual([5000, 5000]);
    expect(shares(10001)).toEqual([3334, 3334, 3333]);
    expect(shares(7, 3).reduce((a, b) => a + b, 0)).toBe(7);
  });
  it("is the RSS growth per opened client", () => {
    const start = { total: 100_000, anon: 50_000, file: 50_000 };
    const loaded = { total: 132_000, anon: 82_000, file: 50_000 };
    expect(perClientKiB(start, loaded, 1000)).toBe(32);
    expect(perClientKiB(start, loaded, 0)).toBeUndefined();
  });
});

describe("bench flags", () => {
  it("defaults to throughput, the TLS part and memory at 1,000 and 10,000 idle clients", () => {
    const o = parseBenchArgs([])!;
    expect(o.parts).toEqual(["throughput", "tls", "memory"]);
    expect(o.tlsRounds).toBe(3);
    expect(o.idleClients).toEqual([1000, 10000]);
    expect(o.pool).toBeUndefined();
  });
  it("--tls alone runs only the TLS part; --rounds sets its rounds too", () => {
    const o = parseBenchArgs(["--tls", "--rounds", "5"])!;
    expect(o.parts).toEqual(["tls"]);
    expect([o.rounds, o.tlsRounds]).toEqual([5, 5]);
    expect(parseBenchArgs(["--quick"])!.tlsRounds).toBe(2);
  });
  it("--quick shortens the runs only", () => {
    const o = parseBenchArgs(["--quick"])!;
    expect([o.durationSec, o.warmupSec, o.scale]).toEqual([5, 1, 1]);
    expect(parseBenchArgs(["--quick", "--duration", "9"])!.durationSec).toBe(9);
  });
  it("parses pool, TLS and node flags", () => {
    const o = parseBenchArgs([
      "--pool-mode",
      "transaction",
      "--pool-size",
      "4",
      "--client-tls",
      // A value starting with "--" must be attached with "=".
      "--node-flags=--max-semi-space-size=1  --no-opt",
    ])!;
    expect(o.pool).toEqual({ mode: "transaction", size: 4 });
    expect(o.clientTls).toBe(true);
    expect(o.nodeFlags).toEqual(["--max-semi-space-size=1", "--no-opt"]);
  });
  it("rejects bad values", () => {
    expect(() => parseBenchArgs(["--pool-mode", "bogus"])).toThrow(/pool-mode/);
    expect(() => parseBenchArgs(["--pool-size", "3"])).toThrow(/needs --pool-mode/);
    expect(() => parseBenchArgs(["--idle-clients", "10,x"])).toThrow(/idle-clients/);
  });
  it("sizes PostgreSQL for one backend per idle client up to the unpooled cap", () => {
    expect(maxConnectionsFor(parseBenchArgs(["--memory"])!)).toBe(1100);
    expect(maxConnectionsFor(parseBenchArgs(["--throughput"])!)).toBe(200);
  });
});

describe("pgwarden's bench config", () => {
  const server = { host: "127.0.0.1", port: 5, user: "u", password: "p", version: "18", tls: undefined };
  const base = { maxClients: 11000, pool: undefined, tls: undefined, nodeFlags: [] };
  it("sizes the session pool for every client unless a pooled mode is asked for", () => {
    // Session mode holds a server connection per client: a pool of 20 would make clients wait.
    expect(pgwardenConfig({ ...server, stop: async () => {} }, 7, base).pool).toEqual({
      size: Math.max(100, base.maxClients),
    });
    const pooled = pgwardenConfig({ ...server, stop: async () => {} }, 7, {
      ...base,
      pool: { mode: "transaction", size: 20 },
    });
    expect(pooled.pool).toEqual({ mode: "transaction", size: 20 });
    expect(pooled.limits).toEqual({ maxClientConnections: 11000 });
  });
});

describe("start-memory probes", () => {
  it("imports each module in order, then announces readiness", () => {
    const program = probeProgram(["effect", "./src/cli/main.ts"]);
    expect(program.indexOf('import("effect")')).toBeLessThan(program.indexOf('import("./src/cli/main.ts")'));
    expect(program).toContain("ready");
  });
  it("holds at most as many two-socket clients as the open-files cap allows", () => {
    const limits = [
      "Limit                     Soft Limit           Hard Limit           Units     ",
      "Max processes             94598                94598                processes ",
      "Max open files            20000                20000                files     ",
    ].join("\n");
    expect(openFilesCap(limits)).toBe(20000);
    expect(twoSocketCap(20000)).toBe(9900);
    expect(openFilesCap("Max open files            unlimited            unlimited            files")).toBe(
      Number.POSITIVE_INFINITY,
    );
    expect(openFilesCap(readFileSync("/proc/self/limits", "utf8"))).toBeGreaterThan(0);
  });
});
