/**
 * Verifier throughput: writes N statement records in segments of S, then times
 * `verifyDirectory` with HMAC and signature checks. Usage: node bench/auditVerify.ts [N] [S]
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AuditEvent } from "../src/audit/AuditEvent.ts";
import { Chain } from "../src/audit/Chain.ts";
import { hmacKeyFromBytes } from "../src/audit/HmacKey.ts";
import { pemSigner, trustedKeyFromPem } from "../src/audit/Signer.ts";
import { segmentFileName } from "../src/audit/segmentFiles.ts";
import { auditClock } from "../src/audit/timestamp.ts";
import { verifyDirectory } from "../src/audit/verify.ts";

const n = Number(process.argv[2] ?? 1_000_000);
const perSegment = Number(process.argv[3] ?? 100_000);
const fail = (what: string): never => {
  throw new Error(what);
};

const key = hmacKeyFromBytes(randomBytes(32));
const signer = pemSigner(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey);
if ("_tag" in key || "_tag" in signer) fail("key setup");
const hmacKey = key as Exclude<typeof key, { _tag: "AuditError" }>;
const sig = signer as Exclude<typeof signer, { _tag: "AuditError" }>;
const dir = await mkdtemp(join(tmpdir(), "pgw-audit-bench-"));
const chain = new Chain({ instance: "bench", boot: "b1", hmacKey });

const event = (i: number): AuditEvent => ({
  kind: "statement",
  ts: auditClock.now(),
  session: `b1-c${i % 100}`,
  identity: "alice",
  source: "127.0.0.1:50432",
  database: "app",
  role: "app_rw",
  message: "Execute",
  textMode: "normalized",
  text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
  paramCount: 1,
  commandTag: "SELECT 1",
  rows: 1,
  durationMs: 0.123,
  outcome: "ok",
});

const t0 = performance.now();
let bytes = 0;
for (let written = 0; written < n; ) {
  const segment = chain.state.segment;
  const lines: string[] = [];
  for (let i = 0; i < perSegment && written < n; i++, written++)
    lines.push(chain.append(event(written)).line);
  lines.push((await chain.checkpoint(sig, "size", auditClock.now())).line);
  const text = `${lines.join("\n")}\n`;
  bytes += text.length;
  await writeFile(join(dir, segmentFileName("bench", segment)), text);
}
const writeMs = performance.now() - t0;

const cpu0 = process.cpuUsage();
const report = await verifyDirectory(dir, {
  hmacKeys: [hmacKey],
  trustedKeys: [
    trustedKeyFromPem(sig.publicKeyPem, "bench") as Exclude<
      ReturnType<typeof trustedKeyFromPem>,
      { _tag: "AuditError" }
    >,
  ],
});
const cpu = process.cpuUsage(cpu0);
const cpuMs = (cpu.user + cpu.system) / 1000;
if (report.status !== "intact")
  fail(`bench log did not verify: ${JSON.stringify(report.instances[0]?.findings)}`);
await rm(dir, { recursive: true, force: true });
const rate = (count: number, ms: number) => Math.round((count / ms) * 1000).toLocaleString("en-US");
process.stdout.write(
  `audit: ${report.records.toLocaleString("en-US")} records, ${(bytes / 1e6).toFixed(0)} MB\n` +
    `  chain+sign (no fsync): ${rate(report.records, writeMs)} records/s\n` +
    `  verify (hmac, links, merkle, signatures): ${rate(report.records, report.elapsedMs)} records/s wall, ` +
    `${rate(report.records, cpuMs)} records per CPU-second\n`,
);
