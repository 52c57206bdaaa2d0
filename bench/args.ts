// Command-line flags of `npm run bench`.

import { parseArgs } from "node:util";
import { TARGET_NAMES, type TargetName } from "./targets.ts";

export interface BenchOptions {
  readonly durationSec: number;
  readonly warmupSec: number;
  readonly clients: number;
  readonly threads: number;
  readonly rounds: number;
  readonly scale: number;
  readonly only: readonly TargetName[];
  readonly json: boolean;
  readonly memory: boolean;
  readonly connections: number;
}

export const USAGE = `usage: npm run bench -- [options]

  --duration S      seconds per measured pgbench run (default 20)
  --warmup S        seconds of unmeasured pgbench before each run (default 3, 0 = none)
  --clients N       pgbench clients, -c (default 20)
  --threads J       pgbench threads, -j (default 2)
  --rounds R        repeat every measurement R times, interleaved; report the median (default 1)
  --scale K         pgbench -i scale factor (default 10)
  --only LIST       comma-separated subset of: ${TARGET_NAMES.join(",")}
  --json            print the result as JSON on stdout (progress still goes to stderr)
  --memory          instead of pgbench: open N idle connections through each target and
                    report RSS growth per connection (targets: pgwarden, pgbouncer, relay)
  --connections N   idle connections for --memory (default 1000)
  --help
`;

function positiveInt(name: string, raw: string | undefined, fallback: number, min = 1): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be an integer >= ${min}`);
  return value;
}

/** Parses argv; returns undefined when --help was asked for. Throws on bad input. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      duration: { type: "string" },
      warmup: { type: "string" },
      clients: { type: "string" },
      threads: { type: "string" },
      rounds: { type: "string" },
      scale: { type: "string" },
      only: { type: "string" },
      json: { type: "boolean", default: false },
      memory: { type: "boolean", default: false },
      connections: { type: "string" },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  let only: TargetName[] = [...TARGET_NAMES];
  if (values.only !== undefined) {
    const names = values.only
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    for (const name of names) {
      if (!(TARGET_NAMES as readonly string[]).includes(name)) {
        throw new Error(`--only: unknown target "${name}" (known: ${TARGET_NAMES.join(", ")})`);
      }
    }
    only = TARGET_NAMES.filter((name) => names.includes(name));
    if (only.length === 0) throw new Error("--only: no targets given");
  }
  return {
    durationSec: positiveInt("duration", values.duration, 20),
    warmupSec: positiveInt("warmup", values.warmup, 3, 0),
    clients: positiveInt("clients", values.clients, 20),
    threads: positiveInt("threads", values.threads, 2),
    rounds: positiveInt("rounds", values.rounds, 1),
    scale: positiveInt("scale", values.scale, 10),
    only,
    json: values.json,
    memory: values.memory,
    connections: positiveInt("connections", values.connections, 1000),
  };
}
