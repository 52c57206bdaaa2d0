// Turns measurements into the printed tables, the summary line and the JSON document.

import { PROTOCOL_MODES, type ProtocolMode } from "./pgbench.ts";
import { TARGET_LABELS, TARGET_NAMES, type TargetName } from "./targets.ts";

export interface Measurement {
  readonly target: TargetName;
  readonly mode: ProtocolMode;
  readonly ok: boolean;
  /** Median over the rounds that succeeded (undefined when any round failed). */
  readonly tps: number | undefined;
  readonly latencyMs: number | undefined;
  readonly rounds: ReadonlyArray<{ tps: number | undefined; latencyMs: number | undefined; error?: string }>;
  readonly error: string | undefined;
}

export type Ratios = Record<"vsDirect" | "vsRelay" | "vsPgbouncer", number | undefined>;

const REFERENCES = { vsDirect: "direct", vsRelay: "relay", vsPgbouncer: "pgbouncer" } as const;

export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

function find(
  results: readonly Measurement[],
  target: TargetName,
  mode: ProtocolMode,
): Measurement | undefined {
  return results.find((m) => m.target === target && m.mode === mode);
}

export function ratio(results: readonly Measurement[], mode: ProtocolMode, a: TargetName, b: TargetName) {
  const x = find(results, a, mode);
  const y = find(results, b, mode);
  if (!x?.ok || !y?.ok || x.tps === undefined || y.tps === undefined || y.tps === 0) return undefined;
  return x.tps / y.tps;
}

export function ratiosFor(results: readonly Measurement[], m: Measurement): Ratios {
  const out: Ratios = { vsDirect: undefined, vsRelay: undefined, vsPgbouncer: undefined };
  for (const key of Object.keys(REFERENCES) as (keyof Ratios)[]) {
    out[key] = ratio(results, m.mode, m.target, REFERENCES[key]);
  }
  return out;
}

const fmtRatio = (value: number | undefined) => (value === undefined ? "—" : value.toFixed(2));

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
      rows.push([
        TARGET_LABELS[target],
        m.ok && m.tps !== undefined ? m.tps.toFixed(0) : "FAILED",
        m.ok && m.latencyMs !== undefined ? m.latencyMs.toFixed(3) : "—",
        fmtRatio(r.vsDirect),
        fmtRatio(r.vsRelay),
        fmtRatio(r.vsPgbouncer),
      ]);
    }
    if (rows.length === 0) continue;
    const title = mode === "simple" ? "simple protocol (-M simple)" : "extended protocol (-M extended)";
    sections.push(
      `${title}\n${table(["target", "TPS", "avg latency ms", "vs direct", "vs bare relay", "vs PgBouncer"], rows)}`,
    );
  }
  return sections.join("\n\n");
}

export interface Summary {
  readonly pgwardenVsRelay: Record<ProtocolMode, number | undefined>;
  readonly pgwardenVsPgbouncer: Record<ProtocolMode, number | undefined>;
  readonly goal: number;
}

export function summarize(results: readonly Measurement[]): Summary {
  const per = (other: TargetName) =>
    Object.fromEntries(
      PROTOCOL_MODES.map((mode) => [mode, ratio(results, mode, "pgwarden", other)]),
    ) as Record<ProtocolMode, number | undefined>;
  return { pgwardenVsRelay: per("relay"), pgwardenVsPgbouncer: per("pgbouncer"), goal: 0.95 };
}

export function formatSummary(summary: Summary): string {
  const part = (values: Record<ProtocolMode, number | undefined>) =>
    PROTOCOL_MODES.map((mode) => `${mode} ${fmtRatio(values[mode])}`).join(", ");
  const relayValues = PROTOCOL_MODES.map((mode) => summary.pgwardenVsRelay[mode]);
  const verdict = relayValues.some((v) => v === undefined)
    ? "n/a"
    : relayValues.every((v) => (v ?? 0) >= summary.goal)
      ? "met"
      : "NOT met";
  return (
    `summary: pgwarden / bare relay: ${part(summary.pgwardenVsRelay)} ` +
    `(goal >= ${summary.goal.toFixed(2)}: ${verdict}); ` +
    `pgwarden / PgBouncer: ${part(summary.pgwardenVsPgbouncer)}`
  );
}
