// Command-line flags of `npm run bench`.

import { parseArgs } from "node:util";
import { POOL_MODES, type Pool, type PoolMode, TARGET_NAMES, type TargetName } from "./targets.ts";

/** Which parts a run does: pgbench throughput + CPU, client TLS, idle-client memory, the start-memory breakdown, pooled runs. */
export type Part = "throughput" | "tls" | "memory" | "start-memory" | "pooled";

export interface BenchOptions {
  readonly parts: readonly Part[];
  readonly durationSec: number;
  readonly warmupSec: number;
  readonly clients: number;
  readonly threads: number;
  readonly rounds: number;
  /** Rounds of the TLS part: --rounds when given, else 3 (2 with --quick), for a spread. */
  readonly tlsRounds: number;
  readonly scale: number;
  readonly only: readonly TargetName[];
  readonly json: boolean;
  readonly idleClients: readonly number[];
  readonly pool: Pool | undefined;
  readonly clientTls: boolean;
  readonly nodeFlags: readonly string[];
}

export const USAGE = `usage: npm run bench -- [options]

  By default a run does pgbench throughput with proxy CPU per transaction, then the client-TLS
  runs, then memory per idle client; see docs/benchmarks.md.

  --quick           smoke check (about 4 minutes): --duration 5 --warmup 1 --scale 1, 2 TLS rounds
  --duration S      seconds per measured pgbench run (default 20)
  --warmup S        seconds of unmeasured pgbench before each run (default 3, 0 = none)
  --clients N       pgbench clients, -c (default 20)
  --threads J       pgbench threads, -j (default 2)
  --rounds R        repeat every measurement R times, interleaved; report the median (default 1;
                    the TLS part defaults to 3, or 2 with --quick)
  --scale K         pgbench -i scale factor (default 10)
  --only LIST       comma-separated subset of: ${TARGET_NAMES.join(",")}
  --json            print the result as JSON on stdout (progress still goes to stderr)
  --throughput      only the pgbench part
  --tls             only the client-TLS part: pgwarden and PgBouncer with the same pinned TLS 1.3
                    suite and group, pgbench -S (TPS, CPU/tx) and pgbench -C (new TLS
                    connections per second); combine with --throughput/--memory to add parts
  --memory          only the idle-client memory part
  --idle-clients L  comma-separated idle-client counts for the memory part (default 1000,10000);
                    each count gets a fresh proxy process. Above 1000, targets that open one
                    upstream connection per client run in front of a PgBouncer session pool,
                    at most as many clients as two descriptors each allow under the open-files cap
  --pool-mode MODE  ${POOL_MODES.join(" | ")}: start pgwarden with pool.mode/pool.size and PgBouncer
                    with the same pool_mode/default_pool_size
  --pool-size N     server connections per pool with --pool-mode (default 20)
  --client-tls      the pgbench part with sslmode=require: every target terminates TLS with the
                    pinned policy (PostgreSQL, the relay, pgwarden, PgBouncer)
  --node-flags=F    extra node flags for the pgwarden process only, space-separated; attach the
                    value with "=", e.g. --node-flags=--max-semi-space-size=1
  --start-memory    only the breakdown of pgwarden's start RSS (no PostgreSQL needed)
  --pooled          only pgwarden against PgBouncer with the same pool (--pool-mode, default
                    transaction; --pool-size, default 20): pgbench -S at 50 and 500 clients in
                    three protocol modes, -C in session mode, 10,000 idle clients' memory and
                    accept time (docs/benchmarks.md, "Pooled runs")
  --help
`;

function positiveInt(name: string, raw: string | undefined, fallback: number, min = 1): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be an integer >= ${min}`);
  return value;
}

function list(raw: string): string[] {
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function targetList(raw: string | undefined): TargetName[] {
  if (raw === undefined) return [...TARGET_NAMES];
  const names = list(raw);
  for (const name of names) {
    if (!(TARGET_NAMES as readonly string[]).includes(name)) {
      throw new Error(`--only: unknown target "${name}" (known: ${TARGET_NAMES.join(", ")})`);
    }
  }
  const only = TARGET_NAMES.filter((name) => names.includes(name));
  if (only.length === 0) throw new Error("--only: no targets given");
  return only;
}

function countList(raw: string | undefined): number[] {
  if (raw === undefined) return [1000, 10000];
  const counts = list(raw).map((s) => positiveInt("idle-clients", s, 0));
  if (counts.length === 0) throw new Error("--idle-clients: no counts given");
  return counts;
}

function poolOption(mode: string | undefined, size: string | undefined): Pool | undefined {
  if (mode === undefined) {
    if (size !== undefined) throw new Error("--pool-size needs --pool-mode");
    return undefined;
  }
  if (!(POOL_MODES as readonly string[]).includes(mode)) {
    throw new Error(`--pool-mode must be one of ${POOL_MODES.join(", ")}`);
  }
  return { mode: mode as PoolMode, size: positiveInt("pool-size", size, 20) };
}

function partsOf(values: {
  throughput: boolean;
  tls: boolean;
  memory: boolean;
  "start-memory": boolean;
  pooled: boolean;
}): Part[] {
  const chosen = (["throughput", "tls", "memory", "start-memory", "pooled"] as const).filter(
    (p) => values[p],
  );
  return chosen.length > 0 ? chosen : ["throughput", "tls", "memory"];
}

/** Parses argv; returns undefined when --help was asked for. Throws on bad input. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      quick: { type: "boolean", default: false },
      duration: { type: "string" },
      warmup: { type: "string" },
      clients: { type: "string" },
      threads: { type: "string" },
      rounds: { type: "string" },
      scale: { type: "string" },
      only: { type: "string" },
      json: { type: "boolean", default: false },
      throughput: { type: "boolean", default: false },
      tls: { type: "boolean", default: false },
      memory: { type: "boolean", default: false },
      "idle-clients": { type: "string" },
      "pool-mode": { type: "string" },
      "pool-size": { type: "string" },
      "client-tls": { type: "boolean", default: false },
      "node-flags": { type: "string" },
      "start-memory": { type: "boolean", default: false },
      pooled: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const quick = values.quick;
  return {
    parts: partsOf(values),
    durationSec: positiveInt("duration", values.duration, quick ? 5 : 20),
    warmupSec: positiveInt("warmup", values.warmup, quick ? 1 : 3, 0),
    clients: positiveInt("clients", values.clients, 20),
    threads: positiveInt("threads", values.threads, 2),
    rounds: positiveInt("rounds", values.rounds, 1),
    tlsRounds: positiveInt("rounds", values.rounds, quick ? 2 : 3),
    scale: positiveInt("scale", values.scale, quick ? 1 : 10),
    only: targetList(values.only),
    json: values.json,
    idleClients: countList(values["idle-clients"]),
    pool: poolOption(values["pool-mode"], values["pool-size"]),
    clientTls: values["client-tls"],
    nodeFlags: values["node-flags"] === undefined ? [] : values["node-flags"].split(/\s+/).filter(Boolean),
  };
}
