import { open, readFile, stat } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { validateRecord } from "./AuditEvent.ts";
import { verifyCheckpointBody } from "./Checkpoint.ts";
import type { HmacKey } from "./HmacKey.ts";
import { hmacKeyBytes } from "./HmacKey.ts";
import { GENESIS_HASH } from "./recordLine.ts";
import { type TrustedKey, trustedKeyFromPem } from "./Signer.ts";
import { listSegments, type SegmentFile } from "./segmentFiles.ts";
import {
  type ChainPoint,
  type ChunkResult,
  type ChunkTask,
  decodeLines,
  type Finding,
  pointAfter,
  readSegmentText,
  SegmentCheck,
  type SegmentKeys,
  type SegmentResult,
  type SegmentTask,
  type SegmentText,
  splitLines,
  verifyChunk,
} from "./verifySegment.ts";

export type { Finding, FindingCheck, FindingClass } from "./verifySegment.ts";

/**
 * Verifies a directory of segments: sequence, hash links, HMACs, Merkle roots, checkpoint
 * signatures and checkpoint chaining. Stops each instance's chain at its first tampered record
 * and names it; an unsealed tail or a missing segment makes the result incomplete.
 *
 * A large log's segments are cut into chunks checked on several threads, each from the chain
 * point the line before it gives; the chunks are joined in order here, where checkpoints,
 * rotations and every line a chunk could not judge alone are checked in order too.
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
  /**
   * Threads for a large log, the calling one included (default: the machine's parallelism, at
   * most 8; 1 = the calling thread alone).
   */
  readonly threads?: number;
  /** Lines per chunk handed to a thread, a power of two (default 8,192). */
  readonly chunkLines?: number;
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
/**
 * A power of two, so that whole chunks are whole Merkle subtrees; 8,192 lines of a few hundred
 * bytes each are a few megabytes: enough to hide a message's cost, few enough to share evenly.
 */
const CHUNK_LINES = 1 << 13;

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

/**
 * Chunk checks on worker threads and, between its own awaits, on this thread too: the calling
 * thread is warm and would otherwise wait, while a worker spends a few hundred milliseconds
 * loading its modules before its first chunk.
 */
class ChunkPool {
  readonly #keys: SegmentKeys;
  readonly #workers: Worker[] = [];
  /** Chunks each worker holds: two, so one waits in its port while this thread is busy. */
  readonly #load = new Map<Worker, number>();
  readonly #queue: Queued[] = [];
  readonly #running = new Map<number, { readonly worker: Worker; readonly task: Queued }>();
  #n = 0;
  #here = false;
  #closed = false;

  /** Undefined when a key cannot be handed to another thread (only its holder has its bytes). */
  static open(workers: number, keys: SegmentKeys): ChunkPool | undefined {
    const hmacKeys = [...keys.macKeys.values()].map((k) => hmacKeyBytes(k));
    if (hmacKeys.some((b) => b === undefined)) return undefined;
    return new ChunkPool(workers, keys, {
      hmacKeys: hmacKeys as Buffer[],
      trustedPems: [...keys.trusted.values()].map((k) => k.pem),
    });
  }

  private constructor(
    workers: number,
    keys: SegmentKeys,
    workerData: { hmacKeys: Buffer[]; trustedPems: string[] },
  ) {
    this.#keys = keys;
    for (let i = 0; i < workers; i++) {
      const w = new Worker(new URL("./verifyThread.ts", import.meta.url), { workerData });
      w.on("message", (m: { n: number; result?: ChunkResult; error?: string }) => {
        const running = this.#running.get(m.n);
        this.#running.delete(m.n);
        this.#load.set(w, this.#load.get(w)! - 1);
        running?.task.done(m.result ?? new Error(m.error));
        this.#dispatch();
      });
      // A worker that fails or exits takes no more chunks; what it held is checked here instead.
      const lost = () => {
        if (!this.#load.delete(w)) return;
        for (const [n, r] of this.#running)
          if (r.worker === w) {
            this.#running.delete(n);
            this.#queue.unshift(r.task);
          }
        this.#dispatch();
      };
      w.on("error", lost);
      w.on("exit", lost);
      this.#workers.push(w);
      this.#load.set(w, 0);
    }
  }

  /** Checks the chunk of `bytes` (a segment over shared memory) that `chunk` names. */
  run(bytes: Uint8Array, chunk: ChunkTask): Promise<ChunkResult> {
    if (this.#closed) return Promise.reject(new Error("verifier threads closed"));
    return new Promise((resolve, reject) => {
      this.#queue.push({ bytes, chunk, done: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
      this.#dispatch();
    });
  }

  #dispatch(): void {
    if (this.#closed) return;
    for (const [w, held] of this.#load) {
      // A second chunk only while another is left for this thread: at the end, none waits idle.
      for (let k = held; k < 2 && this.#queue.length > k; k++) {
        const task = this.#queue.shift()!;
        const n = ++this.#n;
        this.#running.set(n, { worker: w, task });
        this.#load.set(w, k + 1);
        w.postMessage({ n, buffer: task.bytes.buffer, chunk: task.chunk });
      }
    }
    if (this.#queue.length > 0 && !this.#here) {
      this.#here = true;
      setImmediate(() => this.#runHere());
    }
  }

  /** One queued chunk on this thread, then back to the event loop so workers' answers are taken. */
  #runHere(): void {
    this.#here = false;
    if (this.#closed) return;
    const t = this.#queue.shift();
    if (t === undefined) return;
    try {
      t.done(verifyChunk(t.bytes, t.chunk, this.#keys));
    } catch (e) {
      t.done(e as Error);
    }
    this.#dispatch();
  }

  /** Drops the queued chunks of a segment no longer wanted (its promises never settle). */
  drop(bytes: Uint8Array): void {
    for (let i = this.#queue.length - 1; i >= 0; i--)
      if (this.#queue[i]!.bytes === bytes) this.#queue.splice(i, 1);
  }

  /** Stops: chunks not yet checked are dropped (their segments are no longer wanted). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#queue.length = 0;
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }
}

interface Queued {
  readonly bytes: Uint8Array;
  readonly chunk: ChunkTask;
  readonly done: (r: ChunkResult | Error) => void;
}

/** Verifies a whole segment on this thread, from the chain point its task names. */
export const verifySegmentText = (
  segment: SegmentText,
  task: SegmentTask,
  keys: SegmentKeys,
): SegmentResult => {
  const lines = splitLines(segment.text);
  const check = new SegmentCheck(task, keys, task.start, validateRecord);
  check.lines(lines, 0, segment.badLine);
  return check.finish(lines.length, segment.tornBytes);
};

/** Bytes read at a time: the first chunk can go to a thread long before the segment is in. */
const READ_BYTES = 4 << 20;

/**
 * A segment being read into shared memory and cut, as it arrives, into chunks of `chunkLines`
 * lines, each handed to the pool as soon as its last line is in.
 */
class SegmentLoad {
  readonly chunks: ChunkTask[] = [];
  readonly results: Promise<ChunkResult>[] = [];
  bytes: Uint8Array = new Uint8Array(0);
  lineCount = 0;
  tornBytes = 0;
  #finished = false;
  #abandoned = false;
  #failure: unknown;
  #wake: (() => void)[] = [];
  readonly #pool: ChunkPool;

  constructor(p: Planned, pool: ChunkPool, chunkLines: number) {
    this.#pool = pool;
    this.#read(p, pool, chunkLines).then(
      () => this.#settle(),
      (e: unknown) => this.#settle(e ?? new Error("segment read failed")),
    );
  }

  /** Chunk `i`, once it is cut; undefined when the segment has no more. */
  async chunk(i: number): Promise<ChunkTask | undefined> {
    while (i >= this.chunks.length && !this.#finished) await new Promise<void>((r) => this.#wake.push(r));
    if (this.#failure !== undefined) throw this.#failure;
    return this.chunks[i];
  }

  /** The segment is not wanted after all (the instance's chain ended before it): stop reading it. */
  abandon(): void {
    this.#abandoned = true;
    this.#pool.drop(this.bytes);
  }

  #settle(failure?: unknown): void {
    this.#failure = failure;
    this.#finished = true;
    this.#progress();
  }

  #progress(): void {
    for (const w of this.#wake.splice(0)) w();
  }

  async #read(p: Planned, pool: ChunkPool, chunkLines: number): Promise<void> {
    const f = await open(p.path, "r");
    try {
      const size = (await f.stat()).size;
      const bytes = new Uint8Array(new SharedArrayBuffer(size));
      this.bytes = bytes;
      const all = Buffer.from(bytes.buffer, 0, size);
      let lines = 0;
      let from = 0;
      let prevFrom = -1;
      let lineFrom = 0;
      let read = 0;
      while (read < size && !this.#abandoned) {
        const { bytesRead } = await f.read(bytes, read, Math.min(READ_BYTES, size - read), read);
        if (bytesRead === 0) break;
        read += bytesRead;
        // Only what has been read: the rest of the buffer is zeros, never a newline.
        const arrived = all.subarray(0, read);
        for (let nl = arrived.indexOf(10, lineFrom); nl >= 0; nl = arrived.indexOf(10, lineFrom)) {
          const start = lineFrom;
          lineFrom = nl + 1;
          if (++lines % chunkLines === 0) {
            this.#cut({ task: p.task, from, to: lineFrom, prevFrom, base: lines - chunkLines }, pool);
            prevFrom = start;
            from = lineFrom;
          }
        }
      }
      if (from < lineFrom)
        this.#cut({ task: p.task, from, to: lineFrom, prevFrom, base: lines - (lines % chunkLines) }, pool);
      this.lineCount = lines;
      this.tornBytes = read - lineFrom;
    } finally {
      await f.close();
    }
  }

  #cut(chunk: ChunkTask, pool: ChunkPool): void {
    if (this.#abandoned) return;
    this.chunks.push(chunk);
    const r = pool.run(this.bytes, chunk);
    r.catch(() => {});
    this.results.push(r);
    this.#progress();
  }
}

/**
 * Joins a segment's chunks in order, from the point where the segment really starts: a chunk
 * checked from that point is taken whole; where one stopped early or was checked from a point
 * that proved wrong, its lines are checked here in order, which names any finding exactly as
 * the sequential verifier would.
 */
const joinSegment = async (s: SegmentLoad, task: SegmentTask, keys: SegmentKeys): Promise<SegmentResult> => {
  const check = new SegmentCheck(task, keys, task.start, validateRecord);
  let taken = 0;
  /** Checks chunk `c`'s lines in order from line `taken`; false when a finding ended the segment. */
  const inOrder = (c: ChunkTask): boolean => {
    const skip = taken - c.base;
    const { lines, badLine } = decodeLines(s.bytes.subarray(c.from, c.to));
    taken += check.lines(lines.slice(skip), taken, badLine === undefined ? undefined : badLine - skip);
    return !check.ended;
  };
  let last: ChunkTask | undefined;
  for (let i = 0; ; i++) {
    const c = await s.chunk(i);
    if (c === undefined) break;
    if (last !== undefined && taken < c.base && !inOrder(last)) return check.result();
    const r = await s.results[i]!;
    if (check.absorb(r)) taken += r.count;
    last = c;
  }
  if (last !== undefined && taken < s.lineCount && !inOrder(last)) return check.result();
  return check.finish(s.lineCount, s.tornBytes);
};

interface SegmentRun {
  readonly run: (i: number, start: ChainPoint, keys: SegmentKeys) => Promise<SegmentResult>;
  /** Stops reading ahead: the instance's verification is over. */
  readonly abandon: () => void;
}

const segmentResults = (
  planned: readonly Planned[],
  pool: ChunkPool | undefined,
  chunkLines: number,
): SegmentRun => {
  if (pool === undefined)
    return {
      run: async (i, start, keys) => {
        const p = planned[i]!;
        return verifySegmentText(await readSegmentText(p.path), { ...p.task, start }, keys);
      },
      abandon: () => {},
    };
  const loaded = new Map<number, SegmentLoad>();
  const load = (i: number) => {
    if (i < planned.length && !loaded.has(i)) loaded.set(i, new SegmentLoad(planned[i]!, pool, chunkLines));
  };
  return {
    run: async (i, start, keys) => {
      load(i);
      load(i + 1);
      const s = loaded.get(i)!;
      loaded.delete(i);
      return joinSegment(s, { ...planned[i]!.task, start }, keys);
    },
    abandon: () => {
      for (const s of loaded.values()) s.abandon();
      loaded.clear();
    },
  };
};

const verifyInstance = async (
  instance: string,
  planned: readonly Planned[],
  segment: SegmentRun,
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
    // Each segment is checked from where its predecessor really ended.
    const r = await segment.run(i, p.gap !== undefined ? p.task.start : (point ?? GENESIS_POINT), {
      ...keys,
      trusted,
    });
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
  const threads = Math.min(options.threads ?? availableParallelism(), 8);
  const chunkLines = options.chunkLines ?? CHUNK_LINES;
  if (chunkLines < 1 || (chunkLines & (chunkLines - 1)) !== 0)
    throw new RangeError("chunkLines must be a power of two");
  const pool =
    bytes >= (options.parallelMinBytes ?? PARALLEL_MIN_BYTES) && threads > 1
      ? ChunkPool.open(threads - 1, keys)
      : undefined;
  const instances: InstanceReport[] = [];
  try {
    for (const name of names) {
      const planned = plans.get(name)!;
      const segments = segmentResults(planned, pool, chunkLines);
      try {
        instances.push(await verifyInstance(name, planned, segments, keys, keys.trusted.size > 0));
      } finally {
        segments.abandon();
      }
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
