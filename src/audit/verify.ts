import { open, readFile, stat } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { verifyCheckpointBody } from "./Checkpoint.ts";
import type { HmacKey } from "./HmacKey.ts";
import { hmacKeyBytes } from "./HmacKey.ts";
import { GENESIS_HASH } from "./recordLine.ts";
import { type TrustedKey, trustedKeyFromPem } from "./Signer.ts";
import { listSegments, type SegmentFile } from "./segmentFiles.ts";
import {
  type ChainPoint,
  type Finding,
  pointAfter,
  readSegmentText,
  type SegmentKeys,
  type SegmentResult,
  type SegmentTask,
  samePoint,
  verifySegmentText,
} from "./verifySegment.ts";

export type { Finding, FindingCheck, FindingClass } from "./verifySegment.ts";

/**
 * Verifies a directory of segments: sequence, hash links, HMACs, Merkle roots, checkpoint
 * signatures and checkpoint chaining. Stops each instance's chain at its first tampered record
 * and names it; an unsealed tail or a missing segment makes the result incomplete.
 *
 * Each segment is checked on its own (on worker threads when the log is large) from the chain
 * point its predecessor's last line gives; the joins are then checked in order here, as are
 * checkpoints signed by keys that earlier segments announced.
 */

export interface InstanceReport {
  readonly instance: string;
  readonly segments: number;
  readonly records: number;
  readonly sealedSegments: number;
  readonly firstSeq?: number;
  readonly lastSeq?: number;
  /** Records after the last checkpoint: chain-checked, not covered by a signature. */
  readonly unsealed?: {
    readonly file: string;
    readonly fromSeq: number;
    readonly toSeq: number;
    readonly count: number;
  };
  readonly findings: readonly Finding[];
}

export type VerifyStatus = "intact" | "tampered" | "incomplete";

export interface VerifyReport {
  readonly status: VerifyStatus;
  readonly instances: readonly InstanceReport[];
  /** Checks not made for want of keys. */
  readonly unchecked: readonly ("hmac" | "signature")[];
  readonly records: number;
  readonly elapsedMs: number;
}

export interface VerifyOptions {
  /** HMAC keys; without any, HMACs are not checked (and `unchecked` says so). */
  readonly hmacKeys?: readonly HmacKey[];
  /** Public keys trusted to sign checkpoints; without any, signatures are not checked. */
  readonly trustedKeys?: readonly TrustedKey[];
  /** Verifier threads for a large log (default: the machine's parallelism, at most 8; 1 = none). */
  readonly threads?: number;
  /** Logs smaller than this are verified on the calling thread (default 16 MiB). */
  readonly parallelMinBytes?: number;
}

export const EXIT_CODE: Record<VerifyStatus, number> = { intact: 0, tampered: 1, incomplete: 2 };

const GENESIS_POINT: ChainPoint = {
  expectSeq: 1,
  prevHash: GENESIS_HASH,
  prevCheckpoint: GENESIS_HASH,
  macKeyId: undefined,
};
/** Below this many bytes in all, threads cost more to start than they save. */
const PARALLEL_MIN_BYTES = 16 << 20;
const TAIL_BYTES = 64 << 10;

/** The last complete line of a file (undefined when it has none). */
const lastLine = async (path: string): Promise<string | undefined> => {
  const f = await open(path, "r");
  try {
    const size = (await f.stat()).size;
    const n = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(n);
    await f.read(buf, 0, n, size - n);
    const end = buf.lastIndexOf(10);
    const start = end < 0 ? -1 : buf.lastIndexOf(10, end - 1);
    if (end >= 0 && (start >= 0 || n === size)) return buf.toString("utf8", start + 1, end);
  } finally {
    await f.close();
  }
  // A last line longer than the tail read, or none at all: read it whole.
  const text = await readFile(path, "utf8");
  const end = text.lastIndexOf("\n");
  return end < 0 ? undefined : text.slice(text.lastIndexOf("\n", end - 1) + 1, end);
};

interface Planned {
  readonly task: SegmentTask;
  readonly path: string;
  readonly size: number;
  /** A missing-segment finding that precedes this file. */
  readonly gap?: Finding;
}

const plan = async (instance: string, files: readonly SegmentFile[]): Promise<Planned[]> => {
  const out: Planned[] = [];
  let expectSegment = 1;
  for (let f = 0; f < files.length; f++) {
    const file = files[f]!;
    const before = f === 0 ? undefined : await lastLine(files[f - 1]!.path);
    let start = f === 0 ? GENESIS_POINT : pointAfter(before);
    let gap: Finding | undefined;
    if (file.segment !== expectSegment) {
      const range =
        file.segment - 1 === expectSegment ? `${expectSegment}` : `${expectSegment}..${file.segment - 1}`;
      gap = {
        class: "incomplete",
        check: "missing-segment",
        file: file.name,
        message: `segment ${range} missing before this file; chain resumes unchecked here`,
      };
      start = {
        expectSeq: undefined,
        prevHash: undefined,
        prevCheckpoint: undefined,
        macKeyId: f === 0 ? undefined : start.macKeyId,
      };
    }
    expectSegment = file.segment + 1;
    const { size } = await stat(file.path);
    out.push({
      task: { instance, file: file.name, segment: file.segment, isLast: f === files.length - 1, start },
      path: file.path,
      size,
      ...(gap === undefined ? {} : { gap }),
    });
  }
  return out;
};

type Run = (p: Planned) => Promise<SegmentResult>;

const inline =
  (keys: SegmentKeys): Run =>
  async (p) =>
    verifySegmentText(await readSegmentText(p.path), p.task, keys);

/** A pool of verifier threads, each fed one segment at a time. */
const threads = (
  count: number,
  hmacKeys: readonly HmacKey[],
  trusted: readonly TrustedKey[],
): { run: Run; close: () => Promise<void> } => {
  const workerData = {
    hmacKeys: hmacKeys.map((k) => hmacKeyBytes(k)).filter((b) => b !== undefined),
    trustedPems: trusted.map((k) => k.pem),
  };
  const idle: Worker[] = [];
  const all: Worker[] = [];
  const waiting: (() => void)[] = [];
  for (let i = 0; i < count; i++) {
    const w = new Worker(new URL("./verifyThread.ts", import.meta.url), { workerData });
    idle.push(w);
    all.push(w);
  }
  let n = 0;
  const take = async (): Promise<Worker> => {
    while (idle.length === 0) await new Promise<void>((r) => waiting.push(r));
    return idle.pop()!;
  };
  const run: Run = async (p) => {
    const w = await take();
    const id = ++n;
    try {
      return await new Promise<SegmentResult>((resolve, reject) => {
        const onMessage = (m: { n: number; result?: SegmentResult; error?: string }) => {
          if (m.n !== id) return;
          w.off("message", onMessage);
          w.off("error", reject);
          if (m.result !== undefined) resolve(m.result);
          else reject(new Error(m.error));
        };
        w.on("message", onMessage);
        w.on("error", reject);
        w.postMessage({ n: id, path: p.path, task: p.task });
      });
    } finally {
      idle.push(w);
      waiting.shift()?.();
    }
  };
  return { run, close: async () => void (await Promise.all(all.map((w) => w.terminate()))) };
};

const verifyInstance = async (
  instance: string,
  planned: readonly Planned[],
  results: readonly Promise<SegmentResult>[],
  keys: SegmentKeys,
  checkSigs: boolean,
): Promise<InstanceReport> => {
  const findings: Finding[] = [];
  const trusted = new Map(keys.trusted);
  const missingKeyIds = new Set<string>();
  let records = 0;
  let sealedSegments = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  let unsealed: InstanceReport["unsealed"];
  let point: ChainPoint | undefined;
  const report = (): InstanceReport => ({
    instance,
    segments: planned.length,
    records,
    sealedSegments,
    ...(firstSeq === undefined ? {} : { firstSeq }),
    ...(lastSeq === undefined ? {} : { lastSeq }),
    ...(unsealed === undefined ? {} : { unsealed }),
    findings,
  });
  for (let i = 0; i < planned.length; i++) {
    const p = planned[i]!;
    if (p.gap !== undefined) findings.push(p.gap);
    let r = await results[i]!;
    // The start each segment was checked from must be where its predecessor really ended.
    const actual = p.gap !== undefined ? p.task.start : (point ?? GENESIS_POINT);
    if (!samePoint(actual, p.task.start))
      r = await inline({ ...keys, trusted })({ ...p, task: { ...p.task, start: actual } });
    const d = r.deferred;
    if (d !== undefined) {
      const key = trusted.get(d.signKey);
      const bad =
        key === undefined
          ? `checkpoint signed by untrusted key ${d.signKey}`
          : key.algorithm !== d.alg
            ? `key ${d.signKey} is ${key.algorithm}, checkpoint says ${d.alg}`
            : verifyCheckpointBody(d.body, key)
              ? undefined
              : "checkpoint signature is invalid";
      if (bad !== undefined) {
        records += d.recordsBefore;
        firstSeq ??= r.firstSeq;
        if (d.lastSeqBefore !== undefined) lastSeq = d.lastSeqBefore;
        findings.push({
          class: "tampered",
          check: "signature",
          file: p.task.file,
          line: d.line,
          seq: d.seq,
          message: bad,
        });
        return report();
      }
    }
    records += r.records;
    firstSeq ??= r.firstSeq;
    if (r.lastSeq !== undefined) lastSeq = r.lastSeq;
    findings.push(...r.findings);
    if (r.findings.some((f) => f.class === "tampered")) return report();
    for (const id of r.missingKeyIds) missingKeyIds.add(id);
    if (r.sealed) {
      sealedSegments++;
      // A rotation sealed by a trusted key makes its new key trusted.
      if (checkSigs)
        for (const pem of r.pendingSigners) {
          const k = trustedKeyFromPem(pem, "rotation");
          if (!("_tag" in k)) trusted.set(k.keyId, k);
        }
    }
    if (r.unsealed !== undefined) unsealed = { file: p.task.file, ...r.unsealed };
    point = r.end;
  }
  for (const id of missingKeyIds)
    findings.push({
      class: "incomplete",
      check: "no-hmac-key",
      file: "",
      message: `no HMAC key given for key id ${id}`,
    });
  return report();
};

/** Verifies every instance's chain in `dir`. */
export const verifyDirectory = async (dir: string, options: VerifyOptions = {}): Promise<VerifyReport> => {
  const started = performance.now();
  const hmacKeys = options.hmacKeys ?? [];
  const trustedKeys = options.trustedKeys ?? [];
  const keys: SegmentKeys = {
    macKeys: new Map(hmacKeys.map((k) => [k.id, k])),
    trusted: new Map(trustedKeys.map((k) => [k.keyId, k])),
  };
  const byInstance = await listSegments(dir);
  const names = [...byInstance.keys()].sort((a, b) => (a < b ? -1 : 1));
  const plans = new Map<string, Planned[]>();
  for (const name of names) plans.set(name, await plan(name, byInstance.get(name)!));
  const all = [...plans.values()].flat();
  const bytes = all.reduce((n, p) => n + p.size, 0);
  const count = Math.min(options.threads ?? availableParallelism(), 8, all.length);
  const pool =
    bytes >= (options.parallelMinBytes ?? PARALLEL_MIN_BYTES) && count > 1
      ? threads(count, hmacKeys, trustedKeys)
      : undefined;
  const run = pool?.run ?? inline(keys);
  const instances: InstanceReport[] = [];
  try {
    // Every segment is started at once (the pool queues them); each instance's joins are checked in order.
    const results = new Map(all.map((p) => [p, run(p)]));
    for (const r of results.values()) r.catch(() => {});
    for (const name of names) {
      const planned = plans.get(name)!;
      instances.push(
        await verifyInstance(
          name,
          planned,
          planned.map((p) => results.get(p)!),
          keys,
          keys.trusted.size > 0,
        ),
      );
    }
  } finally {
    await pool?.close();
  }
  const found = instances.flatMap((i) => i.findings);
  const status: VerifyStatus = found.some((x) => x.class === "tampered")
    ? "tampered"
    : found.length > 0 || instances.length === 0
      ? "incomplete"
      : "intact";
  const unchecked: ("hmac" | "signature")[] = [];
  if (hmacKeys.length === 0) unchecked.push("hmac");
  if (trustedKeys.length === 0) unchecked.push("signature");
  return {
    status,
    instances,
    unchecked,
    records: instances.reduce((n, i) => n + i.records, 0),
    elapsedMs: performance.now() - started,
  };
};
