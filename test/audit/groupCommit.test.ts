import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { isAuditError } from "../../src/audit/AuditError.ts";
import { openAuditPipeline, startAudit } from "../../src/audit/openPipeline.ts";
import { verifyDirectory } from "../../src/audit/verify.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { decodeConfig } from "../../src/runtime/config.ts";
import { type Keys, makeKeys } from "./support/auditLog.ts";

let keys: Keys;
beforeAll(async () => {
  keys = await makeKeys("group-commit");
});

const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const pipelineWith = async (fsyncBatchMs: number) => {
  const dir = await mkdtemp(join(tmpdir(), "pgw-audit-group-"));
  const config = decodeConfig({
    upstream: { host: "127.0.0.1", port: 5432, user: "u" },
    audit: {
      dir,
      instance: "group",
      hmacKeyFile: keys.hmacKeyFile,
      signing: { pemFile: keys.signingKeyFile },
      fsyncBatchMs,
    },
  });
  if (isPgwardenError(config)) throw new Error(config.message);
  const running = await startAudit(openAuditPipeline(config.audit!, quiet, "test"));
  if (isAuditError(running)) throw new Error(running.message);
  return { dir, running };
};

const accepted = (i: number) =>
  ({ kind: "connectionAccepted", conn: `c${i}`, remote: "127.0.0.1:1", local: "127.0.0.1:2" }) as const;

/** Emits an event every 2 ms for `ms` and counts how often the durable seq moved meanwhile. */
const steadyLoad = async (running: Awaited<ReturnType<typeof pipelineWith>>["running"], ms: number) => {
  const { sink, status } = running.pipeline;
  let commits = 0;
  let last = status().durableSeq;
  const until = Date.now() + ms;
  for (let i = 0; Date.now() < until; i++) {
    sink.emit(accepted(i));
    await sleep(2);
    const now = status().durableSeq;
    if (now !== last) commits++;
    last = now;
  }
  return commits;
};

describe("audit group commit (audit.fsyncBatchMs)", () => {
  it("under steady load starts at most one write and fdatasync per window", async () => {
    const { dir, running } = await pipelineWith(100);
    const commits = await steadyLoad(running, 600);
    // 600 ms of load in 100 ms windows: about six commits (one more for the window under way).
    expect(commits).toBeGreaterThanOrEqual(3);
    expect(commits).toBeLessThanOrEqual(8);
    expect(await running.stop(10_000)).toBeUndefined();
    const report = await verifyDirectory(dir, { hmacKeys: [keys.hmacKey], trustedKeys: [] });
    expect(report.records).toBeGreaterThan(100);
  });

  it("with a window of 0 commits as often as the fsyncs allow", async () => {
    const { running } = await pipelineWith(0);
    // The same load: nearly every event is its own commit (what the window above saves).
    expect(await steadyLoad(running, 300)).toBeGreaterThan(20);
    await running.stop(10_000);
  });

  it("writes the first event after a quiet spell at once, not a window later", async () => {
    const { running } = await pipelineWith(300);
    const { sink, status } = running.pipeline;
    // Longer than the window since the last commit (audit.started, at open).
    await sleep(400);
    const before = status().durableSeq;
    const started = Date.now();
    sink.emit(accepted(1));
    while (status().durableSeq === before && Date.now() - started < 5_000) await sleep(2);
    expect(status().durableSeq).toBeGreaterThan(before);
    // Inside the 300 ms window: the event did not wait for company.
    expect(Date.now() - started).toBeLessThan(250);
    await running.stop(10_000);
  });
  it("closing cuts a commit's wait short: nothing queued is left behind, and close does not wait out the window", async () => {
    const { dir, running } = await pipelineWith(5_000);
    // A commit (audit.started) has just started a window; these events wait for its end.
    await sleep(100);
    for (let i = 0; i < 5; i++) running.pipeline.sink.emit(accepted(i));
    await sleep(50);
    const started = Date.now();
    expect(await running.stop(10_000)).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(2_000);
    const report = await verifyDirectory(dir, { hmacKeys: [keys.hmacKey], trustedKeys: [] });
    // audit.started, the five, and the shutdown checkpoint.
    expect(report.records).toBe(7);
  });
});
