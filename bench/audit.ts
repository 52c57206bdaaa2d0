// The audit part of `npm run bench`: pgwarden with full per-statement audit to fsync'd local
// segments, and with the syslog (rsyslogd, gtls) and JetStream (nats-server -js) sinks added, in
// the same run as audit off; then the verifier over the log the benchmark itself wrote.

import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { isAuditError } from "../src/audit/AuditError.ts";
import { loadHmacKey } from "../src/audit/HmacKey.ts";
import { ensureEmbeddedAuditKeys } from "../src/audit/openPipeline.ts";
import { trustedKeyFromPem } from "../src/audit/Signer.ts";
import { verifyDirectory } from "../src/audit/verify.ts";
import { natsServer } from "../test/audit-sinks/support/nats.ts";
import { makePki } from "../test/audit-sinks/support/pki.ts";
import { rsyslogCollector } from "../test/audit-sinks/support/rsyslog.ts";
import { PROTOCOL_MODES } from "./pgbench.ts";
import { type Measurement, quotient } from "./report.ts";
import type { TargetName } from "./targets.ts";
import { findExecutable, freePort } from "./util.ts";

export type AuditTarget = "pgwarden-audit" | "pgwarden-audit-sinks";
export const isAuditTarget = (n: TargetName): n is AuditTarget =>
  n === "pgwarden-audit" || n === "pgwarden-audit-sinks";

export interface PreparedAudit {
  readonly dir: string;
  readonly hmacKeyFile: string;
  readonly publicKeyFile: string;
  readonly config: Record<string, unknown>;
  /** Stops the collectors this variant started. */
  stop(): Promise<void>;
}

/** Keys, a fresh audit directory and, for the sinks variant, the two collectors. */
export async function prepareAudit(
  workDir: string,
  name: AuditTarget,
): Promise<PreparedAudit | { reason: string }> {
  const home = path.join(workDir, name);
  mkdirSync(home, { recursive: true });
  const keys = await ensureEmbeddedAuditKeys(path.join(home, "keys"));
  const dir = path.join(home, "audit");
  const base = {
    dir,
    instance: "bench",
    statements: "full",
    onFailure: "block",
    // Room for the worker's backlog during a measured run, so pgbench measures the proxy's side
    // rather than refusals; what is left drains at shutdown.
    queueMax: 1_000_000,
    drainTimeoutMs: 300_000,
    hmacKeyFile: keys.hmacKeyFile,
    signing: { pemFile: keys.signingKeyFile },
  };
  if (name === "pgwarden-audit") return { dir, ...keys, config: base, stop: async () => {} };
  for (const bin of ["rsyslogd", "nats-server"])
    if (!findExecutable(bin))
      return { reason: `${bin} not found (Debian: rsyslog rsyslog-gnutls nats-server)` };
  const pki = await makePki(home);
  const syslog = await rsyslogCollector(home, pki, await freePort());
  await syslog.start();
  const nats = await natsServer(home, await freePort());
  await nats.start();
  const config = {
    ...base,
    sinks: {
      syslog: {
        host: "127.0.0.1",
        port: syslog.port,
        servername: "localhost",
        ca: pki.ca,
        cert: pki.clientCert,
        key: pki.clientKey,
        required: true,
      },
      jetstream: { servers: [nats.url], stream: "PGW_BENCH", subject: "pgw.bench", required: true },
    },
  };
  return {
    dir,
    ...keys,
    config,
    stop: async () => {
      await syslog.stop().catch(() => {});
      await nats.stop().catch(() => {});
    },
  };
}

export interface VerifierResult {
  readonly target: AuditTarget;
  readonly status: string;
  readonly records: number;
  /** Median of the timed runs. */
  readonly seconds: number;
  readonly recordsPerSec: number;
  /** Slowest and fastest run, records/s. */
  readonly range: readonly [number, number];
}

/** Timed verifications of one log: the machines are noisy, so the median of several is quoted. */
const VERIFIER_RUNS = 5;

/** `verifyDirectory` with HMAC and signature checks over what the benchmark wrote. */
export async function measureVerifier(target: AuditTarget, a: PreparedAudit): Promise<VerifierResult> {
  const key = await loadHmacKey(a.hmacKeyFile);
  const pub = trustedKeyFromPem(readFileSync(a.publicKeyFile, "utf8"), a.publicKeyFile);
  if (isAuditError(key) || isAuditError(pub)) throw new Error("bench audit keys unreadable");
  const runs: { seconds: number; status: string; records: number }[] = [];
  for (let i = 0; i < VERIFIER_RUNS; i++) {
    const started = process.hrtime.bigint();
    const report = await verifyDirectory(a.dir, { hmacKeys: [key], trustedKeys: [pub] });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    runs.push({ seconds, status: report.status, records: report.records });
  }
  runs.sort((x, y) => x.seconds - y.seconds);
  const median = runs[Math.floor(runs.length / 2)]!;
  return {
    target,
    status: median.status,
    records: median.records,
    seconds: median.seconds,
    recordsPerSec: median.records / median.seconds,
    range: [median.records / runs.at(-1)!.seconds, median.records / runs[0]!.seconds],
  };
}

const pct = (x: number | undefined) => (x === undefined ? "n/a" : `${((1 - x) * 100).toFixed(1)}%`);

/** TPS cost of audit against pgwarden without it, per protocol mode, and the verifier's speed. */
export function formatAudit(
  measurements: readonly Measurement[],
  verifier: readonly VerifierResult[],
): string {
  const tps = (t: TargetName, mode: string) =>
    measurements.find((m) => m.target === t && m.mode === mode)?.tps;
  const cpu = (t: TargetName, mode: string) =>
    measurements.find((m) => m.target === t && m.mode === mode)?.cpuUsPerTx;
  const lines: string[] = [];
  for (const [target, goal] of [
    ["pgwarden-audit", 0.1],
    ["pgwarden-audit-sinks", 0.15],
  ] as const) {
    const parts = PROTOCOL_MODES.map((mode) => {
      const r = quotient(tps(target, mode), tps("pgwarden", mode));
      const c = cpu(target, mode);
      const met = r === undefined ? "n/a" : 1 - r <= goal ? "met" : "NOT met";
      return `${mode} ${pct(r)} (${met}${c === undefined ? "" : `, ${c.toFixed(1)} µs CPU/tx`})`;
    });
    lines.push(`audit: TPS cost of ${target} vs pgwarden, goal <= ${goal * 100}%: ${parts.join("; ")}`);
  }
  for (const v of verifier)
    lines.push(
      `audit: verifier over ${target(v)}'s log: ${v.records} records ${v.status} in ${v.seconds.toFixed(2)} s = ${Math.round(v.recordsPerSec)} records/s, median of ${VERIFIER_RUNS} (range ${Math.round(v.range[0])}-${Math.round(v.range[1])}; goal >= 200000: ${v.recordsPerSec >= 200_000 ? "met" : "NOT met"})`,
    );
  return lines.join("\n");
}

const target = (v: VerifierResult) => v.target;
