// Runs `pgbench -S` against one target and parses its summary.

import type { Target } from "./targets.ts";
import { spawnChild } from "./util.ts";

export const PROTOCOL_MODES = ["simple", "extended"] as const;
export type ProtocolMode = (typeof PROTOCOL_MODES)[number];

export interface PgbenchRun {
  readonly clients: number;
  readonly threads: number;
  readonly durationSec: number;
  readonly mode: ProtocolMode;
  /** pgbench connects with sslmode=require (client TLS) instead of sslmode=disable. */
  readonly tls: boolean;
  /** `-C`: a new connection (and login, and handshake) for every transaction. */
  readonly connect?: boolean;
}

export interface PgbenchResult {
  readonly ok: boolean;
  readonly tps: number | undefined;
  readonly latencyMs: number | undefined;
  readonly failedTransactions: number | undefined;
  /** Transactions pgbench completed in the run (the divisor for CPU per transaction). */
  readonly transactions: number | undefined;
  /** With -C: pgbench's average connection time, ms. */
  readonly connectionMs: number | undefined;
  /** pgbench's exit code (null when killed). */
  readonly exitCode: number | null;
  readonly error: string | undefined;
}

/** Extracts tps, average latency, completed and failed transactions from pgbench's report. */
export function parsePgbenchOutput(text: string): {
  tps: number | undefined;
  latencyMs: number | undefined;
  failedTransactions: number | undefined;
  transactions: number | undefined;
} {
  const num = (re: RegExp): number | undefined => {
    const value = re.exec(text)?.[1];
    return value === undefined ? undefined : Number(value);
  };
  return {
    // With -C pgbench counts reconnections in: tps is then new connections per second too.
    tps: num(/^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)/m),
    latencyMs: num(/^latency average = ([\d.]+) ms/m),
    failedTransactions: num(/^number of failed transactions: (\d+)/m),
    transactions: num(/^number of transactions actually processed: (\d+)/m),
  };
}

/** With -C: pgbench's average connection time in ms (connect, TLS handshake, login). */
export function parseConnectionMs(text: string): number | undefined {
  const value = /^average connection time = ([\d.]+) ms/m.exec(text)?.[1];
  return value === undefined ? undefined : Number(value);
}

export async function runPgbench(target: Target, run: PgbenchRun): Promise<PgbenchResult> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PGSSLMODE: run.tls ? "require" : "disable",
    PGGSSENCMODE: "disable",
  };
  delete env.PGPASSWORD;
  delete env.PGSERVICE;
  if (target.password !== undefined) env.PGPASSWORD = target.password;
  const args = [
    "-n", // no vacuum before the run (tables were vacuumed by -i)
    "-S",
    ...(run.connect === true ? ["-C"] : []),
    "-M",
    run.mode,
    "-c",
    String(run.clients),
    "-j",
    String(Math.min(run.threads, run.clients)),
    "-T",
    String(run.durationSec),
    "-h",
    target.host,
    "-p",
    String(target.port),
    "-U",
    target.user,
    "postgres",
  ];
  const child = spawnChild("pgbench", args, { env });
  const watchdog = setTimeout(() => child.process.kill("SIGKILL"), (run.durationSec + 60) * 1000);
  await child.exited;
  clearTimeout(watchdog);
  const output = child.output();
  const parsed = parsePgbenchOutput(output);
  const code = child.process.exitCode;
  let error: string | undefined;
  if (code !== 0) error = `pgbench exited with ${code ?? child.process.signalCode}`;
  else if (parsed.tps === undefined) error = "no tps line in pgbench output";
  else if (parsed.failedTransactions === undefined) error = "no failed-transactions line in pgbench output";
  else if (parsed.failedTransactions > 0) error = `${parsed.failedTransactions} failed transactions`;
  else if (parsed.transactions === undefined) error = "no transactions-processed line in pgbench output";
  if (error) {
    const tail = output.trim().split("\n").slice(-8).join("\n");
    error = `${error}${tail ? `\n${tail}` : ""}`;
  }
  return {
    ok: error === undefined,
    ...parsed,
    connectionMs: parseConnectionMs(output),
    exitCode: code,
    error,
  };
}
