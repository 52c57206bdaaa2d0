// Turns measurements into the printed tables, the summary lines and the JSON document.

import { PROTOCOL_MODES, type ProtocolMode } from "./pgbench.ts";
import { TARGET_LABELS, TARGET_NAMES, type TargetName } from "./targets.ts";

export interface RoundResult {
  readonly tps: number | undefined;
  readonly latencyMs: number | undefined;
  readonly transactions: number | undefined;
  /** Proxy user+system CPU time per transaction in this round (undefined for direct). */
  readonly cpuUsPerTx: number | undefined;
  readonly error?: string;
}

export interface Measurement {
  readonly target: TargetName;
  readonly mode: ProtocolMode;
  readonly ok: boolean;
  /** Median over the rounds that succeeded (undefined when any round failed). */
  readonly tps: number | undefined;
  readonly latencyMs: number | undefined;
  readonly cpuUsPerTx: number | undefined;
  readonly rounds: readonly RoundResult[];
  readonly error: string | undefined;
}

/** Which number of a measurement a ratio compares. */
export type Metric = "tps" | "cpuUsPerTx";

export type Ratios = Record<"vsDirect" | "vsRelay" | "vsPgbouncer", number | undefined>;

const REFERENCES = { vsDirect: "direct", vsRelay: "relay", vsPgbouncer: "pgbouncer" } as const;

/** Goals from the architecture issue: TPS at least this share of the relay's, CPU at most this multiple. */
export const GOALS = { tpsVsRelay: 0.95, cpuVsRelay: 1.1 } as const;

export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/** a / b, or undefined when either side is missing or b is zero. */
export function quotient(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : a / b;
}

function find(
  results: readonly Measurement[],
  target: TargetName,
  mode: ProtocolMode,
): Measurement | undefined {
  return results.find((m) => m.target === target && m.mode === mode);
}

/** Ratio of the medians of one metric between two targets in one protocol mode. */
export function ratio(
  results: readonly Measurement[],
  mode: ProtocolMode,
  a: TargetName,
  b: TargetName,
  metric: Metric = "tps",
): number | undefined {
  const x = find(results, a, mode);
  const y = find(results, b, mode);
  if (!x?.ok || !y?.ok) return undefined;
  return quotient(x[metric], y[metric]);
}

/**
 * a / b within each round, then the median. Rounds interleave the targets, so a ratio within one
 * round cancels most of the drift of a shared machine that medians of raw figures keep.
 */
export function pairedRatio(
  results: readonly Measurement[],
  mode: ProtocolMode,
  a: TargetName,
  b: TargetName,
  metric: Metric,
): { median: number | undefined; rounds: number[] } {
  const x = find(results, a, mode);
  const y = find(results, b, mode);
  if (x === undefined || y === undefined) return { median: undefined, rounds: [] };
  const rounds = x.rounds.flatMap((r, i) => {
    const q = quotient(r[metric], y.rounds[i]?.[metric]);
    return q === undefined ? [] : [q];
  });
  return { median: median(rounds), rounds };
}

export function ratiosFor(results: readonly Measurement[], m: Measurement, metric: Metric = "tps"): Ratios {
  const out: Ratios = { vsDirect: undefined, vsRelay: undefined, vsPgbouncer: undefined };
  for (const key of Object.keys(REFERENCES) as (keyof Ratios)[]) {
    out[key] = ratio(results, m.mode, m.target, REFERENCES[key], metric);
  }
  return out;
}

export const fmtRatio = (value: number | undefined) => (value === undefined ? "—" : value.toFixed(2));

export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join("  ");
  return [line(headers), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

export function formatTables(results: readonly Measurement[]): string {
  const sections: string[] = [];
  for (const mode of PROTOCOL_MODES) {
    const rows: string[][] = [];
    for (const target of TARGET_NAMES) {
      const m = find(results, target, mode);
      if (!m) continue;
      const r = ratiosFor(results, m);
      const c = ratiosFor(results, m, "cpuUsPerTx");
      rows.push([
        TARGET_LABELS[target],
        m.ok && m.tps !== undefined ? m.tps.toFixed(0) : "FAILED",
        m.ok && m.latencyMs !== undefined ? m.latencyMs.toFixed(3) : "—",
        fmtRatio(r.vsDirect),
        fmtRatio(r.vsRelay),
        fmtRatio(r.vsPgbouncer),
        m.cpuUsPerTx === undefined ? "—" : m.cpuUsPerTx.toFixed(1),
        fmtRatio(c.vsRelay),
        fmtRatio(c.vsPgbouncer),
      ]);
    }
    if (rows.length === 0) continue;
    const title = mode === "simple" ? "simple protocol (-M simple)" : "extended protocol (-M extended)";
    const headers = [
      "target",
      "TPS",
      "avg latency ms",
      "TPS vs direct",
      "vs bare relay",
      "vs PgBouncer",
      "proxy CPU µs/tx",
      "CPU vs bare relay",
      "vs PgBouncer",
    ];
    sections.push(`${title}\n${table(headers, rows)}`);
  }
  return sections.join("\n\n");
}

type PerMode = Record<ProtocolMode, number | undefined>;

export interface Summary {
  readonly pgwardenVsRelay: PerMode;
  readonly pgwardenVsPgbouncer: PerMode;
  readonly cpuPgwardenVsRelay: PerMode;
  readonly cpuPgwardenVsPgbouncer: PerMode;
  readonly pairedVsRelay: PerMode;
  readonly pairedCpuVsRelay: PerMode;
  readonly goals: typeof GOALS;
}

export function summarize(results: readonly Measurement[]): Summary {
  const per = (fn: (mode: ProtocolMode) => number | undefined) =>
    Object.fromEntries(PROTOCOL_MODES.map((mode) => [mode, fn(mode)])) as PerMode;
  return {
    pgwardenVsRelay: per((mode) => ratio(results, mode, "pgwarden", "relay")),
    pgwardenVsPgbouncer: per((mode) => ratio(results, mode, "pgwarden", "pgbouncer")),
    cpuPgwardenVsRelay: per((mode) => ratio(results, mode, "pgwarden", "relay", "cpuUsPerTx")),
    cpuPgwardenVsPgbouncer: per((mode) => ratio(results, mode, "pgwarden", "pgbouncer", "cpuUsPerTx")),
    pairedVsRelay: per((mode) => pairedRatio(results, mode, "pgwarden", "relay", "tps").median),
    pairedCpuVsRelay: per((mode) => pairedRatio(results, mode, "pgwarden", "relay", "cpuUsPerTx").median),
    goals: GOALS,
  };
}

/** "met" when every mode satisfies `ok`, "n/a" when a mode has no value. */
function verdict(values: PerMode, ok: (v: number) => boolean): string {
  const list = PROTOCOL_MODES.map((mode) => values[mode]);
  if (list.some((v) => v === undefined)) return "n/a";
  return list.every((v) => ok(v ?? 0)) ? "met" : "NOT met";
}

function part(values: PerMode): string {
  return PROTOCOL_MODES.map((mode) => `${mode} ${fmtRatio(values[mode])}`).join(", ");
}

export function formatSummary(summary: Summary, results: readonly Measurement[]): string {
  const { tpsVsRelay, cpuVsRelay } = summary.goals;
  const lines = [
    `summary: TPS pgwarden / bare relay: ${part(summary.pgwardenVsRelay)} ` +
      `(goal >= ${tpsVsRelay.toFixed(2)}: ${verdict(summary.pgwardenVsRelay, (v) => v >= tpsVsRelay)}); ` +
      `pgwarden / PgBouncer: ${part(summary.pgwardenVsPgbouncer)}`,
    `summary: proxy CPU per transaction pgwarden / bare relay: ${part(summary.cpuPgwardenVsRelay)} ` +
      `(goal <= ${cpuVsRelay.toFixed(2)}: ${verdict(summary.cpuPgwardenVsRelay, (v) => v <= cpuVsRelay)}); ` +
      `pgwarden / PgBouncer: ${part(summary.cpuPgwardenVsPgbouncer)}`,
  ];
  for (const [label, metric] of [
    ["TPS", "tps"],
    ["CPU/tx", "cpuUsPerTx"],
  ] as const) {
    const parts = PROTOCOL_MODES.flatMap((mode) => {
      const p = pairedRatio(results, mode, "pgwarden", "relay", metric);
      return p.rounds.length < 2
        ? []
        : [`${mode} ${fmtRatio(p.median)} (rounds ${p.rounds.map((x) => x.toFixed(2)).join(", ")})`];
    });
    if (parts.length > 0)
      lines.push(`paired ${label} pgwarden / bare relay, median of per-round ratios: ${parts.join("; ")}`);
  }
  return lines.join("\n");
}

/** RSS of one proxy right after it listens (and has settled), before any client. */
export interface StartRss {
  readonly target: TargetName;
  readonly totalKiB: number;
  readonly anonKiB: number;
}

/** Goal from the architecture issue for pgwarden's start RSS. */
export const START_RSS_GOAL_MB = 80;

export function formatStartRss(rows: readonly StartRss[]): string {
  const relay = rows.find((r) => r.target === "relay")?.totalKiB;
  const bouncer = rows.find((r) => r.target === "pgbouncer")?.totalKiB;
  const body = rows.map((r) => [
    TARGET_LABELS[r.target],
    (r.totalKiB / 1024).toFixed(1),
    (r.anonKiB / 1024).toFixed(1),
    fmtRatio(quotient(r.totalKiB, relay)),
    fmtRatio(quotient(r.totalKiB, bouncer)),
  ]);
  const pgwarden = rows.find((r) => r.target === "pgwarden");
  const mb = pgwarden === undefined ? undefined : (pgwarden.totalKiB * 1024) / 1e6;
  const goal =
    mb === undefined
      ? ""
      : `\npgwarden start RSS ${mb.toFixed(0)} MB (goal <= ${START_RSS_GOAL_MB} MB: ${mb <= START_RSS_GOAL_MB ? "met" : "NOT met"})`;
  return `start RSS (listening, settled, no clients)\n${table(["target", "VmRSS MiB", "anon MiB", "vs bare relay", "vs PgBouncer"], body)}${goal}`;
}
