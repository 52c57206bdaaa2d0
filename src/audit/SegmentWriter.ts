import { type FileHandle, mkdir, open } from "node:fs/promises";
import { join } from "node:path";
import { type AuditError, auditError, isAuditError } from "./AuditError.ts";
import type { AuditEvent, CheckpointReason } from "./AuditEvent.ts";
import { Chain, type ChainedLine, type ChainState, GENESIS_STATE } from "./Chain.ts";
import type { HmacKey } from "./HmacKey.ts";
import { GENESIS_HASH, lineHash, splitHmac } from "./recordLine.ts";
import type { Signer } from "./Signer.ts";
import { listSegments, readSegmentLines, segmentFileName } from "./segmentFiles.ts";
import { auditClock } from "./timestamp.ts";

const BATCH_START_BYTES = 64 << 10;
const BATCH_KEEP_BYTES = 1 << 20;

/**
 * The local segment store: chains events, appends them to `audit-<instance>-<segment>.jsonl`
 * in batches with one fdatasync per batch, and seals segments by size, age, rotation or
 * shutdown. All file work is asynchronous and serialized on one promise chain, so callers
 * never wait on the disk: `append` only queues.
 */
export interface SegmentWriterOptions {
  readonly dir: string;
  readonly instance: string;
  readonly boot: string;
  readonly hmacKey: HmacKey;
  /** Keys the log may still be under after an offline key change; the switch is then recorded. */
  readonly previousHmacKeys?: readonly HmacKey[];
  readonly signer: Signer;
  readonly segmentMaxBytes: number;
  readonly segmentMaxAgeMs: number;
  /** How long the first queued event waits for others to share its write and fsync. */
  readonly fsyncBatchMs: number;
  /** Events queued beyond this are refused (`append` returns false): the caller's failure policy decides. */
  readonly maxQueuedEvents?: number;
  readonly now?: () => string;
  /** Called with each batch once it is durable, in chain order (sinks feed on this). */
  readonly onDurable?: (lines: readonly ChainedLine[]) => void;
}

interface Recovered {
  readonly state: ChainState;
  readonly openLines: readonly string[];
  readonly tornBytes: number;
  /** The last segment file exists without a checkpoint (a crash). */
  readonly unsealed: boolean;
  readonly lastHmacKeyId?: string;
  readonly lastSignKey?: string;
}

const chainError = (message: string): AuditError => auditError("PGW_AUDIT_CHAIN", message);
const ioError = (e: unknown, what: string): AuditError =>
  auditError("PGW_AUDIT_IO", `${what}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);

const parseLine = (
  line: string,
): { seq: number; kind: string; hmacKey: string; signKey?: string } | undefined => {
  try {
    const r = JSON.parse(line) as { seq?: unknown; kind?: unknown; hmacKey?: unknown; signKey?: unknown };
    if (typeof r.seq !== "number" || typeof r.kind !== "string" || typeof r.hmacKey !== "string")
      return undefined;
    return {
      seq: r.seq,
      kind: r.kind,
      hmacKey: r.hmacKey,
      ...(typeof r.signKey === "string" ? { signKey: r.signKey } : {}),
    };
  } catch {
    return undefined;
  }
};

/** Where the chain stands in `dir`, checking the open segment's links and HMACs before adopting it. */
const recover = async (
  dir: string,
  instance: string,
  keys: ReadonlyMap<string, HmacKey>,
): Promise<Recovered | AuditError> => {
  const files = (await listSegments(dir)).get(instance) ?? [];
  const last = files.at(-1);
  if (last === undefined) return { state: GENESIS_STATE, openLines: [], tornBytes: 0, unsealed: false };
  const { lines, tornBytes } = await readSegmentLines(last.path);
  const lastLine = lines.at(-1);
  const lastRec = lastLine === undefined ? undefined : parseLine(lastLine);
  if (lastLine !== undefined && lastRec === undefined)
    return chainError(`${last.name}: last line is not a record`);
  if (lastRec?.kind === "checkpoint") {
    if (tornBytes > 0)
      return chainError(`${last.name}: bytes after its checkpoint; run pgwarden audit verify`);
    const h = lineHash(lastLine!);
    return {
      state: { nextSeq: lastRec.seq + 1, prevHash: h, segment: last.segment + 1, prevCheckpoint: h },
      openLines: [],
      tornBytes: 0,
      unsealed: false,
      lastHmacKeyId: lastRec.hmacKey,
      ...(lastRec.signKey === undefined ? {} : { lastSignKey: lastRec.signKey }),
    };
  }
  // An unsealed segment: the previous one must end with its checkpoint, the chain continues from it.
  let prevHash = GENESIS_HASH;
  let nextSeq = 1;
  let lastSignKey: string | undefined;
  const before = files.at(-2);
  if (last.segment > 1) {
    if (before === undefined || before.segment !== last.segment - 1)
      return chainError(`${last.name}: segment ${last.segment - 1} is missing`);
    const cpLine = (await readSegmentLines(before.path)).lines.at(-1);
    const cp = cpLine === undefined ? undefined : parseLine(cpLine);
    if (cp?.kind !== "checkpoint") return chainError(`${before.name}: does not end with a checkpoint`);
    prevHash = lineHash(cpLine!);
    nextSeq = cp.seq + 1;
    lastSignKey = cp.signKey;
  }
  const prevCheckpoint = prevHash;
  let lastHmacKeyId: string | undefined;
  for (const [i, line] of lines.entries()) {
    const rec = parseLine(line);
    const parts = splitHmac(line);
    const prev = (JSON.parse(line) as { prev?: unknown }).prev;
    if (rec === undefined || parts === undefined || rec.seq !== nextSeq || prev !== prevHash)
      return chainError(`${last.name} line ${i + 1}: breaks the chain; run pgwarden audit verify`);
    const key = keys.get(rec.hmacKey);
    if (key === undefined)
      return auditError(
        "PGW_AUDIT_KEY",
        `${last.name} line ${i + 1}: under HMAC key ${rec.hmacKey}, which is not configured`,
      );
    if (key.mac(parts.body) !== parts.hmac)
      return chainError(`${last.name} line ${i + 1}: HMAC mismatch; run pgwarden audit verify`);
    if (rec.kind === "audit.key.rotation") {
      const r = JSON.parse(line) as { keyType?: string; newKeyId?: string };
      lastHmacKeyId = r.keyType === "hmac" ? r.newKeyId : rec.hmacKey;
    } else lastHmacKeyId = rec.hmacKey;
    prevHash = lineHash(line);
    nextSeq++;
  }
  return {
    state: { nextSeq, prevHash, segment: last.segment, prevCheckpoint },
    openLines: lines,
    tornBytes,
    unsealed: true,
    ...(lastHmacKeyId === undefined ? {} : { lastHmacKeyId }),
    ...(lastSignKey === undefined ? {} : { lastSignKey }),
  };
};

export class SegmentWriter {
  readonly #o: SegmentWriterOptions;
  readonly #chain: Chain;
  #signer: Signer;
  readonly #now: () => string;
  readonly #maxQueued: number;
  #queue: AuditEvent[] = [];
  /** The drained lines' bytes, reused from drain to drain (drains never overlap: #serialize). */
  #batch = Buffer.allocUnsafe(BATCH_START_BYTES);
  #batchLength = 0;
  #work: Promise<void> = Promise.resolve();
  #file: FileHandle | undefined;
  #segmentOpenedAt = Date.now();
  #batchTimer: NodeJS.Timeout | undefined;
  #ageTimer: NodeJS.Timeout | undefined;
  #failure: AuditError | undefined;
  #durableSeq: number;
  #closed = false;

  private constructor(o: SegmentWriterOptions, chain: Chain) {
    this.#o = o;
    this.#chain = chain;
    this.#signer = o.signer;
    this.#now = o.now ?? auditClock.now;
    this.#maxQueued = o.maxQueuedEvents ?? 65_536;
    this.#durableSeq = chain.state.nextSeq - 1;
  }

  /** Opens the store, sealing a segment a crash left open (and cutting a torn last line). */
  static async open(o: SegmentWriterOptions): Promise<SegmentWriter | AuditError> {
    try {
      await mkdir(o.dir, { recursive: true, mode: 0o750 });
      const keys = new Map([o.hmacKey, ...(o.previousHmacKeys ?? [])].map((k) => [k.id, k]));
      const r = await recover(o.dir, o.instance, keys);
      if (isAuditError(r)) return r;
      const chainKey = r.lastHmacKeyId === undefined ? o.hmacKey : keys.get(r.lastHmacKeyId);
      if (chainKey === undefined)
        return auditError(
          "PGW_AUDIT_KEY",
          `the log is under HMAC key ${r.lastHmacKeyId}, which is not configured`,
        );
      const chain = new Chain({
        instance: o.instance,
        boot: o.boot,
        hmacKey: chainKey,
        state: r.state,
        openSegmentLines: r.openLines,
      });
      const w = new SegmentWriter(o, chain);
      const now = w.#now();
      if (r.unsealed) {
        const path = join(o.dir, segmentFileName(o.instance, r.state.segment));
        w.#file = await open(path, "r+");
        if (r.tornBytes > 0) await w.#file.truncate((await w.#file.stat()).size - r.tornBytes);
        await w.#file.close();
        w.#file = await open(path, "a");
        const sealErr = await w.#sealNow("recovery", r.tornBytes > 0 ? r.tornBytes : undefined);
        if (sealErr !== undefined) return sealErr;
      }
      // Key changes made while stopped are recorded, so the chain says when they happened.
      const pending: ChainedLine[] = [];
      if (chainKey.id !== o.hmacKey.id) pending.push(chain.rotateHmacKey(o.hmacKey, now));
      if (r.lastSignKey !== undefined && r.lastSignKey !== o.signer.keyId)
        pending.push(chain.announceSigner(r.lastSignKey, o.signer, now));
      if (pending.length > 0) {
        const err = await w.#writeLines(pending);
        if (err !== undefined) return err;
      }
      w.#armAgeTimer();
      return w;
    } catch (e) {
      return ioError(e, o.dir);
    }
  }

  /** Seq of the last record known to be on disk. */
  get durableSeq(): number {
    return this.#durableSeq;
  }
  get failure(): AuditError | undefined {
    return this.#failure;
  }
  get queued(): number {
    return this.#queue.length;
  }

  /** Queues an event; false when the queue is full, the writer failed or it is closed. */
  append(event: AuditEvent): boolean {
    if (this.#closed || this.#failure !== undefined || this.#queue.length >= this.#maxQueued) return false;
    this.#queue.push(event);
    if (this.#batchTimer === undefined) {
      this.#batchTimer = setTimeout(() => {
        this.#batchTimer = undefined;
        void this.flush();
      }, this.#o.fsyncBatchMs);
    }
    return true;
  }

  /** Writes and fsyncs everything queued so far. */
  flush(): Promise<AuditError | undefined> {
    return this.#serialize(() => this.#drain());
  }

  /** Closes the open segment with a checkpoint now; a segment with no record yet stays open. */
  seal(reason: CheckpointReason = "manual"): Promise<AuditError | undefined> {
    return this.#serialize(async () => {
      const err = await this.#drain();
      if (err !== undefined || this.#chain.segmentCount === 0) return err;
      return this.#sealNow(reason);
    });
  }

  /** Switches the HMAC key: the rotation record is authenticated by the old key and sealed. */
  rotateHmacKey(next: HmacKey): Promise<AuditError | undefined> {
    return this.#serialize(async () => {
      const err = await this.#drain();
      if (err !== undefined) return err;
      return (
        (await this.#writeLines([this.#chain.rotateHmacKey(next, this.#now())])) ??
        (await this.#sealNow("rotation"))
      );
    });
  }

  /** Switches the signer: the old key signs the checkpoint that carries the new public key. */
  rotateSigner(next: Signer): Promise<AuditError | undefined> {
    return this.#serialize(async () => {
      const err =
        (await this.#drain()) ??
        (await this.#writeLines([this.#chain.announceSigner(this.#signer.keyId, next, this.#now())])) ??
        (await this.#sealNow("rotation"));
      if (err === undefined) this.#signer = next;
      return err;
    });
  }

  /** Drains the queue, seals the segment (reason "shutdown") and releases the file. */
  async close(): Promise<AuditError | undefined> {
    const err = await this.seal("shutdown");
    this.#closed = true;
    clearTimeout(this.#batchTimer);
    clearTimeout(this.#ageTimer);
    await this.#work;
    await this.#file?.close().catch(() => undefined);
    this.#file = undefined;
    return err;
  }

  #serialize(task: () => Promise<AuditError | undefined>): Promise<AuditError | undefined> {
    const run = this.#work.then(async () => {
      if (this.#failure !== undefined) return this.#failure;
      const err = await task().catch((e: unknown) => ioError(e, this.#o.dir));
      if (err !== undefined) this.#failure = err;
      return err;
    });
    this.#work = run.then(() => undefined);
    return run;
  }

  async #drain(): Promise<AuditError | undefined> {
    clearTimeout(this.#batchTimer);
    this.#batchTimer = undefined;
    while (this.#queue.length > 0) {
      const batch = this.#queue;
      this.#queue = [];
      let lines: ChainedLine[] = [];
      this.#batchLength = 0;
      for (const ev of batch) {
        lines.push(this.#chain.append(ev));
        this.#addBytes(this.#chain.lastBytes);
        if (this.#chain.segmentBytes >= this.#o.segmentMaxBytes) {
          const err = (await this.#writeLines(lines, this.#batchBytes())) ?? (await this.#sealNow("size"));
          if (err !== undefined) return err;
          lines = [];
          this.#batchLength = 0;
        }
      }
      const err = await this.#writeLines(lines, this.#batchBytes());
      if (err !== undefined) return err;
    }
    // A burst's batch does not stay allocated after it.
    if (this.#batch.length > BATCH_KEEP_BYTES) this.#batch = Buffer.allocUnsafe(BATCH_START_BYTES);
    if (Date.now() - this.#segmentOpenedAt >= this.#o.segmentMaxAgeMs && this.#chain.segmentCount > 0)
      return this.#sealNow("age");
    return undefined;
  }

  /** Appends a line's bytes and its newline to the batch being drained. */
  #addBytes(bytes: Uint8Array): void {
    const need = this.#batchLength + bytes.length + 1;
    if (need > this.#batch.length) {
      const bigger = Buffer.allocUnsafe(Math.max(need, this.#batch.length * 2));
      bigger.set(this.#batch.subarray(0, this.#batchLength));
      this.#batch = bigger;
    }
    this.#batch.set(bytes, this.#batchLength);
    this.#batch[need - 1] = 0x0a;
    this.#batchLength = need;
  }

  #batchBytes(): Uint8Array {
    return this.#batch.subarray(0, this.#batchLength);
  }

  /** Writes `lines` (as `bytes` when the drain has them) and fsyncs them. */
  async #writeLines(lines: readonly ChainedLine[], bytes?: Uint8Array): Promise<AuditError | undefined> {
    if (lines.length === 0) return undefined;
    if (this.#file === undefined) {
      const path = join(this.#o.dir, segmentFileName(this.#o.instance, this.#chain.state.segment));
      // "wx": a segment file is created once; finding one would mean two writers.
      this.#file = await open(path, "wx", 0o640);
      const d = await open(this.#o.dir, "r");
      await d.sync().finally(() => d.close());
      this.#segmentOpenedAt = Date.now();
      this.#armAgeTimer();
    }
    if (bytes !== undefined) await this.#file.write(bytes);
    else {
      let text = "";
      for (const l of lines) text += `${l.line}\n`;
      await this.#file.write(text);
    }
    await this.#file.datasync();
    this.#durableSeq = lines.at(-1)!.seq;
    this.#o.onDurable?.(lines);
    return undefined;
  }

  async #sealNow(reason: CheckpointReason, tornBytes?: number): Promise<AuditError | undefined> {
    const cp = await this.#chain.checkpoint(
      this.#signer,
      reason,
      this.#now(),
      tornBytes === undefined ? {} : { tornBytes },
    );
    // The checkpoint belongs to the segment it closes: write it before the file is let go.
    if (this.#file === undefined) {
      const path = join(this.#o.dir, segmentFileName(this.#o.instance, cp.segment));
      this.#file = await open(path, "wx", 0o640);
    }
    const err = await this.#writeLines([cp]);
    await this.#file?.close();
    this.#file = undefined;
    this.#segmentOpenedAt = Date.now();
    return err;
  }

  #armAgeTimer(): void {
    clearTimeout(this.#ageTimer);
    if (this.#closed) return;
    this.#ageTimer = setTimeout(() => {
      void this.#serialize(async () => {
        if (this.#closed || this.#chain.segmentCount === 0) return undefined;
        return (await this.#drain()) ?? (await this.#sealNow("age"));
      }).then(() => this.#armAgeTimer());
    }, this.#o.segmentMaxAgeMs);
    this.#ageTimer.unref();
  }
}
