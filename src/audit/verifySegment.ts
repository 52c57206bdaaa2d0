import { isUtf8 } from "node:buffer";
import { readFile } from "node:fs/promises";
import type { validateRecord } from "./AuditEvent.ts";
import { checkpointMismatch, verifyCheckpointBody } from "./Checkpoint.ts";
import type { HmacKey, LineDigest } from "./HmacKey.ts";
import { MerkleAccumulator, type MerkleSubtrees } from "./Merkle.ts";
import { AUDIT_SCHEMA_VERSION, HMAC_PREFIX, HMAC_SUFFIX_LENGTH, lineHash, splitHmac } from "./recordLine.ts";
import { type TrustedKey, trustedKeyFromPem } from "./Signer.ts";

/**
 * Verification of a segment's lines, given the chain state they must start from: pure, so a
 * segment's chunks can be checked on several threads and joined in order (verify.ts). A record whose
 * HMAC verifies under a configured key is the writer's own canonical text, so its envelope is
 * checked in place (`,"seq":N,` and the like) instead of by a full parse; any line that does not
 * match that layout exactly takes the full path, which names the failed check.
 */

export type FindingClass = "tampered" | "incomplete";
export type FindingCheck =
  | "json"
  | "utf8"
  | "layout"
  | "instance"
  | "seq"
  | "prev"
  | "hmac"
  | "hmac-key"
  | "no-hmac-key"
  | "schema"
  | "merkle"
  | "checkpoint"
  | "checkpoint-chain"
  | "signature"
  | "after-checkpoint"
  | "unsealed-segment"
  | "torn-line"
  | "unsealed-tail"
  | "missing-segment";

export interface Finding {
  readonly class: FindingClass;
  readonly check: FindingCheck;
  readonly file: string;
  /** 1-based line in the file; absent for whole-file findings. */
  readonly line?: number;
  readonly seq?: number;
  readonly message: string;
}

/** Where the chain stands before a segment; undefined fields are unknown (after a missing segment). */
export interface ChainPoint {
  readonly expectSeq: number | undefined;
  readonly prevHash: string | undefined;
  readonly prevCheckpoint: string | undefined;
  readonly macKeyId: string | undefined;
}

export interface SegmentTask {
  readonly instance: string;
  readonly file: string;
  readonly segment: number;
  readonly isLast: boolean;
  readonly start: ChainPoint;
}

/** A checkpoint signed by a key this verification was not given: the caller checks it in order. */
export interface DeferredSignature {
  readonly line: number;
  readonly seq: number;
  readonly signKey: string;
  readonly alg: string;
  readonly body: string;
  /** Records and last seq before the checkpoint, should it fail. */
  readonly recordsBefore: number;
  readonly lastSeqBefore: number | undefined;
}

export interface SegmentResult {
  /** In order; a tampered finding, if any, is the last. */
  readonly findings: Finding[];
  readonly records: number;
  readonly firstSeq: number | undefined;
  readonly lastSeq: number | undefined;
  readonly sealed: boolean;
  readonly end: ChainPoint;
  readonly unsealed?: { readonly fromSeq: number; readonly toSeq: number; readonly count: number };
  readonly missingKeyIds: string[];
  /** Public keys (PEM) announced in the segment, trusted once its checkpoint's signature is. */
  readonly pendingSigners: string[];
  readonly deferred?: DeferredSignature;
}

interface RecordView {
  schema?: unknown;
  id?: unknown;
  seq?: unknown;
  instance?: unknown;
  prev?: unknown;
  hmacKey?: unknown;
  hmac?: unknown;
  kind?: unknown;
}

const ASCII = /^[\x00-\x7f]*$/;
const KIND_AT = ',"kind":"';
const PREV_AT = ',"prev":"';
const SCHEMA_AT = `,"schema":${AUDIT_SCHEMA_VERSION},`;
const SEQ_AT = ',"seq":';

/** Whether `line` has `text` at `at`, followed by the character `next`. */
const endsWith = (line: string, at: number, text: string, next: number): boolean =>
  line.startsWith(text, at) && line.charCodeAt(at + text.length) === next;

/** A segment file's text, and where its bytes stop being UTF-8 (decoding replaced them). */
export interface SegmentText {
  readonly text: string;
  /** Bytes after the file's last newline (counted in bytes, not in decoded characters). */
  readonly tornBytes: number;
  /** 0-based index of the first line that is not valid UTF-8, if any. */
  readonly badLine?: number;
}

/**
 * Reads a segment whole and decodes it once: `readFile(path, "utf8")` decodes chunk by chunk into
 * a rope, which then costs more to split into lines than the decoding saved. Decoding replaces
 * bytes that are not UTF-8 by U+FFFD, whose own bytes a line could authenticate: so the bytes are
 * checked too, and the first line they fail in is named.
 */
export const readSegmentText = async (path: string): Promise<SegmentText> => {
  const bytes = await readFile(path);
  const text = bytes.toString("utf8");
  const tornBytes = bytes.length - (bytes.lastIndexOf(10) + 1);
  return isUtf8(bytes) ? { text, tornBytes } : { text, tornBytes, badLine: firstNonUtf8Line(bytes) };
};

// A newline byte is never part of a multi-byte sequence, so the decoded text has the same lines.
const firstNonUtf8Line = (bytes: Buffer): number => {
  let line = 0;
  for (let start = 0; ; line++) {
    const nl = bytes.indexOf(10, start);
    if (!isUtf8(bytes.subarray(start, nl < 0 ? bytes.length : nl)) || nl < 0) return line;
    start = nl + 1;
  }
};

/** The complete lines of a segment's text (what follows the last newline is left out). */
export const splitLines = (text: string): string[] => {
  const lines = text.split("\n");
  lines.pop();
  return lines;
};

/** Where a segment starting after `lastLine` (the previous segment's last line) begins. */
export const pointAfter = (lastLine: string | undefined): ChainPoint => {
  if (lastLine === undefined)
    return { expectSeq: undefined, prevHash: undefined, prevCheckpoint: undefined, macKeyId: undefined };
  let r: RecordView & { keyType?: unknown; newKeyId?: unknown };
  try {
    r = JSON.parse(lastLine) as typeof r;
  } catch {
    r = {};
  }
  const h = lineHash(lastLine);
  return {
    expectSeq: typeof r.seq === "number" ? r.seq + 1 : undefined,
    prevHash: h,
    prevCheckpoint: r.kind === "checkpoint" ? h : undefined,
    macKeyId:
      r.kind === "audit.key.rotation" && r.keyType === "hmac" && typeof r.newKeyId === "string"
        ? r.newKeyId
        : typeof r.hmacKey === "string"
          ? r.hmacKey
          : undefined,
  };
};

export const samePoint = (a: ChainPoint, b: ChainPoint): boolean =>
  a.expectSeq === b.expectSeq &&
  a.prevHash === b.prevHash &&
  a.prevCheckpoint === b.prevCheckpoint &&
  a.macKeyId === b.macKeyId;

export type RecordValidator = typeof validateRecord;

export interface SegmentKeys {
  readonly macKeys: ReadonlyMap<string, HmacKey>;
  readonly trusted: ReadonlyMap<string, TrustedKey>;
}

/**
 * What one thread found in a chunk of a segment (verifyChunk): the chain state after the lines it
 * could judge alone. Joined in order by `SegmentCheck.absorb`, which takes it only if `start` is
 * where the lines before really ended.
 */
export interface ChunkResult {
  /** The chain point the chunk was checked from (presumed from the line before it). */
  readonly start: ChainPoint;
  /** Lines checked; fewer than the chunk's when one needs the whole segment's state. */
  readonly count: number;
  readonly firstSeq: number | undefined;
  readonly lastSeq: number | undefined;
  readonly end: ChainPoint;
  readonly merkle: MerkleSubtrees;
  readonly missingKeyIds: string[];
  readonly pendingSigners: string[];
}

/** A check's verdict on one line. */
const Line = {
  Ok: 0,
  /** A finding ended the segment. */
  Ended: 1,
  /** Chunk mode: the line needs state the chunk does not have; the caller goes on in order. */
  Stop: 2,
} as const;
type Line = (typeof Line)[keyof typeof Line];

/**
 * The state of one segment's verification, fed its lines in order: by `lines` (every check, as
 * the sequential verifier) and by `absorb` (a chunk another thread checked). A chunk is checked
 * by a `SegmentCheck` in chunk mode, which stops, without a finding, at the first line it cannot
 * judge alone: a checkpoint (it covers the whole segment) or any line that fails a check (the
 * sequential pass names it, from the true state).
 */
export class SegmentCheck {
  readonly #task: SegmentTask;
  readonly #keys: SegmentKeys;
  readonly #validate: RecordValidator | undefined;
  readonly #chunk: boolean;
  readonly #checkMacs: boolean;
  readonly #checkSigs: boolean;
  readonly #findings: Finding[] = [];
  readonly #missingKeyIds = new Set<string>();
  readonly #pendingSigners: string[] = [];
  readonly #merkle = new MerkleAccumulator();
  #expectSeq: number | undefined;
  #prevHash: string | undefined;
  #prevCheckpoint: string | undefined;
  #macKeyId: string | undefined;
  #records = 0;
  #firstSeq: number | undefined;
  #lastSeq: number | undefined;
  #segFirstSeq: number | undefined;
  #sealed = false;
  #deferred: DeferredSignature | undefined;
  #tornBytes = 0;
  // The fixed parts of the envelope, built once per key change rather than per record.
  readonly #instancePart: string;
  readonly #idPart: string;
  #keyPart = "";
  /** Whether the envelope parts are ASCII, so that a line's Latin-1 reading can be searched for them. */
  readonly #asciiParts: boolean;
  #keyAscii = false;
  #keyFor: string | undefined;
  #macKey: HmacKey | undefined;
  /** The seq and record hash of the line `#check` accepted last. */
  #seq = 0;
  #hash = "";

  /**
   * Without `validate`, the check is in chunk mode: it also stops at key rotations, the other
   * records only the schema can judge, so that a chunk thread need not load it.
   */
  constructor(task: SegmentTask, keys: SegmentKeys, start: ChainPoint, validate?: RecordValidator) {
    this.#task = task;
    this.#keys = keys;
    this.#validate = validate;
    this.#chunk = validate === undefined;
    this.#checkMacs = keys.macKeys.size > 0;
    this.#checkSigs = keys.trusted.size > 0;
    ({
      expectSeq: this.#expectSeq,
      prevHash: this.#prevHash,
      prevCheckpoint: this.#prevCheckpoint,
      macKeyId: this.#macKeyId,
    } = start);
    this.#instancePart = `,"instance":${JSON.stringify(task.instance)},`;
    this.#idPart = `,"id":${JSON.stringify(`${task.instance}-`).slice(0, -1)}`;
    this.#asciiParts = ASCII.test(this.#instancePart) && ASCII.test(this.#idPart);
  }

  get point(): ChainPoint {
    return {
      expectSeq: this.#expectSeq,
      prevHash: this.#prevHash,
      prevCheckpoint: this.#prevCheckpoint,
      macKeyId: this.#macKeyId,
    };
  }

  /**
   * Checks `lines`, the file's lines from 0-based index `base` on (`badLine`: the index among
   * them of the first that is not UTF-8). Gives how many it took: all of them, or fewer when a
   * finding ended the segment (then `ended`) or, in chunk mode, at the first it could not judge.
   */
  lines(lines: readonly string[], base: number, badLine?: number): number {
    for (let i = 0; i < lines.length; i++) {
      const verdict = i === badLine ? this.#notUtf8(base + i) : this.#check(base + i, lines[i]!);
      if (verdict !== Line.Ok) return i;
      this.#accepted();
    }
    return lines.length;
  }

  /**
   * `lines` over the bytes of whole lines, all valid UTF-8 (the caller checked): each line is
   * read as Latin-1, one character per byte, for the layout checks, and its bytes are hashed as
   * they are; only a line the fast path does not take is decoded as UTF-8 for the full path.
   * Decoding a chunk whole and encoding each line again for its HMAC cost more than the hashing.
   */
  bytesLines(bytes: Buffer, base: number): number {
    let i = 0;
    for (let p = 0; ; i++) {
      const e = bytes.indexOf(10, p);
      if (e < 0) return i;
      if (this.#checkBytes(base + i, bytes, p, e) !== Line.Ok) return i;
      this.#accepted();
      p = e + 1;
    }
  }

  /** The chain moves past the line `#check` accepted last. */
  #accepted(): void {
    if (!this.#sealed) {
      this.#merkle.addLeaf(this.#hash);
      this.#segFirstSeq ??= this.#seq;
    }
    this.#prevHash = this.#hash;
    this.#expectSeq = this.#seq + 1;
    this.#firstSeq ??= this.#seq;
    this.#lastSeq = this.#seq;
    this.#records++;
  }

  /** Whether a finding ended the segment. */
  get ended(): boolean {
    return this.#findings.length > 0 && this.#findings[this.#findings.length - 1]!.class === "tampered";
  }

  /** What a chunk-mode check found, `count` lines in, for the thread that joins the chunks. */
  chunkResult(start: ChainPoint, count: number): ChunkResult {
    return {
      start,
      count,
      firstSeq: this.#firstSeq,
      lastSeq: this.#lastSeq,
      end: this.point,
      merkle: this.#merkle.subtrees(),
      missingKeyIds: [...this.#missingKeyIds],
      pendingSigners: this.#pendingSigners,
    };
  }

  /**
   * Takes a chunk checked elsewhere as if its lines had been checked here: only if it was checked
   * from exactly this state, which holds at a chunk boundary of a sequence whose chunks so far
   * were each taken whole (the Merkle subtrees then line up, MerkleAccumulator.absorb).
   */
  absorb(c: ChunkResult): boolean {
    if (this.#sealed || !samePoint(c.start, this.point)) return false;
    if (c.count === 0) return true;
    this.#merkle.absorb(c.merkle, c.count);
    this.#segFirstSeq ??= c.firstSeq;
    this.#firstSeq ??= c.firstSeq;
    this.#lastSeq = c.lastSeq;
    this.#records += c.count;
    ({ expectSeq: this.#expectSeq, prevHash: this.#prevHash, macKeyId: this.#macKeyId } = c.end);
    for (const id of c.missingKeyIds) this.#missingKeyIds.add(id);
    this.#pendingSigners.push(...c.pendingSigners);
    return true;
  }

  result(): SegmentResult {
    const unsealed =
      this.#sealed || this.ended || (this.#merkle.count === 0 && this.#tornBytes === 0)
        ? undefined
        : {
            fromSeq: this.#segFirstSeq ?? this.#expectSeq ?? 0,
            toSeq: this.#lastSeq ?? 0,
            count: this.#merkle.count,
          };
    return {
      findings: this.#findings,
      records: this.#records,
      firstSeq: this.#firstSeq,
      lastSeq: this.#lastSeq,
      sealed: this.#sealed,
      end: this.point,
      ...(unsealed === undefined ? {} : { unsealed }),
      missingKeyIds: [...this.#missingKeyIds],
      pendingSigners: this.#pendingSigners,
      ...(this.#deferred === undefined ? {} : { deferred: this.#deferred }),
    };
  }

  /** The segment's end, after its `lineCount` complete lines and `tornBytes` more. */
  finish(lineCount: number, tornBytes: number): SegmentResult {
    if (this.ended) return this.result();
    this.#tornBytes = tornBytes;
    const file = this.#task.file;
    const merkle = this.#merkle;
    if (tornBytes > 0) {
      const message = `${tornBytes} byte(s) after the last complete line`;
      if (!this.#task.isLast || this.#sealed) {
        this.#findings.push({ class: "tampered", check: "torn-line", file, line: lineCount + 1, message });
        return this.result();
      }
      this.#findings.push({
        class: "incomplete",
        check: "torn-line",
        file,
        line: lineCount + 1,
        message: `${message} (a write torn by a crash)`,
      });
    }
    if (!this.#sealed) {
      if (!this.#task.isLast) {
        this.#findings.push({
          class: "tampered",
          check: "unsealed-segment",
          file,
          line: lineCount,
          message: "segment ends without a checkpoint but is not the last",
        });
        return this.result();
      }
      if (merkle.count > 0 || tornBytes > 0) {
        const from = this.#segFirstSeq ?? this.#expectSeq ?? 0;
        this.#findings.push({
          class: "incomplete",
          check: "unsealed-tail",
          file,
          message:
            merkle.count === 0
              ? "segment has no complete record and no checkpoint"
              : `${merkle.count} record(s) after the last checkpoint (seq ${from}..${this.#lastSeq ?? 0}): chain intact, not signed`,
        });
      }
    }
    return this.result();
  }

  #notUtf8(i: number): Line {
    // A torn last line may end inside a character: only complete lines get here.
    if (this.#chunk) return Line.Stop;
    this.#findings.push({
      class: "tampered",
      check: "utf8",
      file: this.#task.file,
      line: i + 1,
      message: "bytes that are not UTF-8",
    });
    return Line.Ended;
  }

  #check(i: number, line: string): Line {
    const d = this.#sealed || !this.#checkMacs ? undefined : this.#fast(line);
    if (d === undefined) return this.#checkFully(i, line);
    this.#seq = this.#expectSeq!;
    this.#hash = d.hash;
    return Line.Ok;
  }

  /** `#check` of the line in `bytes[start, end)`. */
  #checkBytes(i: number, bytes: Buffer, start: number, end: number): Line {
    if (!this.#sealed && this.#checkMacs && this.#asciiParts) {
      const d = this.#fast(bytes.toString("latin1", start, end), bytes, start);
      if (d !== undefined) {
        this.#seq = this.#expectSeq!;
        this.#hash = d.hash;
        return Line.Ok;
      }
    }
    return this.#check(i, bytes.toString("utf8", start, end));
  }

  /**
   * The layout a verified writer produces, checked in place: the envelope members are found in
   * their canonical (sorted) order, each search starting where the previous one matched. Gives
   * the line's digests, or undefined to send the line to the full path. With `bytes`, `line` is
   * the Latin-1 reading of the line at `start` there, and the bytes are what is hashed.
   */
  #fast(line: string, bytes?: Buffer, start = 0): LineDigest | undefined {
    const expectSeq = this.#expectSeq;
    const prevHash = this.#prevHash;
    const macKeyId = this.#macKeyId;
    if (expectSeq === undefined || prevHash === undefined || macKeyId === undefined) return undefined;
    const at = line.length - HMAC_SUFFIX_LENGTH;
    if (at < 2 || line.charCodeAt(0) !== 0x7b || !line.startsWith(HMAC_PREFIX, at) || !line.endsWith('"}'))
      return undefined;
    if (this.#keyFor !== macKeyId) {
      this.#keyFor = macKeyId;
      this.#keyPart = `,"hmacKey":"${macKeyId}",`;
      this.#keyAscii = ASCII.test(this.#keyPart);
      this.#macKey = this.#keys.macKeys.get(macKeyId);
    }
    const macKey = this.#macKey;
    if (macKey === undefined || (bytes !== undefined && !this.#keyAscii)) return undefined;
    const seqText = String(expectSeq);
    let p = line.indexOf(this.#keyPart);
    if (p < 0) return undefined;
    p = line.indexOf(this.#idPart, p);
    if (p < 0 || !endsWith(line, p + this.#idPart.length, seqText, 0x22)) return undefined;
    p = line.indexOf(this.#instancePart, p);
    if (p < 0) return undefined;
    const k = line.indexOf(KIND_AT, p);
    if (k < 0 || line.startsWith('checkpoint"', k + KIND_AT.length)) return undefined;
    if (line.startsWith('audit.key.rotation"', k + KIND_AT.length)) return undefined;
    p = line.indexOf(PREV_AT, k);
    if (p < 0 || !endsWith(line, p + PREV_AT.length, prevHash, 0x22)) return undefined;
    p = line.indexOf(SCHEMA_AT, p);
    if (p < 0) return undefined;
    p = line.indexOf(SEQ_AT, p);
    if (p < 0 || !endsWith(line, p + SEQ_AT.length, seqText, 0x2c)) return undefined;
    const d =
      bytes === undefined
        ? macKey.digestLine(line, HMAC_SUFFIX_LENGTH)
        : macKey.digestBytes(bytes, start, start + line.length, HMAC_SUFFIX_LENGTH);
    return line.startsWith(d.mac, at + HMAC_PREFIX.length) ? d : undefined;
  }

  /**
   * Every check of the line at index `i`, field by field, naming the first that fails (in chunk
   * mode: stopping there, and before any checkpoint).
   */
  #checkFully(i: number, line: string): Line {
    const findings = this.#findings;
    const keys = this.#keys;
    const at = { file: this.#task.file, line: i + 1 };
    const tamper = (check: FindingCheck, message: string, seq?: number): Line => {
      if (this.#chunk) return Line.Stop;
      findings.push({ class: "tampered", check, ...at, ...(seq === undefined ? {} : { seq }), message });
      return Line.Ended;
    };
    if (this.#sealed) return tamper("after-checkpoint", "line after the segment's checkpoint");
    let rec: RecordView;
    try {
      rec = JSON.parse(line) as RecordView;
    } catch {
      return tamper("json", "not valid JSON");
    }
    if (typeof rec !== "object" || rec === null || typeof rec.seq !== "number")
      return tamper("layout", `not an audit record of schema ${AUDIT_SCHEMA_VERSION}`);
    if (rec.schema !== AUDIT_SCHEMA_VERSION)
      return tamper(
        "layout",
        rec.schema === 1
          ? "a record of format 1 (record hash H(line)), which this verifier does not read: format 2 hashes H(0x00 ‖ line)"
          : `not an audit record of schema ${AUDIT_SCHEMA_VERSION}`,
      );
    // A checkpoint covers the whole segment: only the thread that joins the chunks can check it.
    if (this.#chunk && (rec.kind === "checkpoint" || rec.kind === "audit.key.rotation")) return Line.Stop;
    const seq = rec.seq;
    const expectSeq = this.#expectSeq;
    if (expectSeq !== undefined && seq !== expectSeq) {
      return tamper(
        "seq",
        seq > expectSeq
          ? `sequence gap: expected seq ${expectSeq}, found ${seq} (${seq - expectSeq} record(s) missing)`
          : `sequence out of order: expected seq ${expectSeq}, found ${seq}`,
        seq,
      );
    }
    if (this.#prevHash !== undefined && rec.prev !== this.#prevHash)
      return tamper(
        "prev",
        "prev does not match the hash of the previous line (it was altered, removed or reordered)",
        seq,
      );
    const instance = this.#task.instance;
    if (rec.instance !== instance || rec.id !== `${instance}-${seq}`)
      return tamper("instance", `record names instance ${String(rec.instance)}, id ${String(rec.id)}`, seq);
    const parts = splitHmac(line);
    if (parts === undefined || parts.hmac !== rec.hmac || typeof rec.hmacKey !== "string")
      return tamper("layout", "the hmac member is not the line's last, 64 hex digits", seq);
    if (this.#macKeyId !== undefined && rec.hmacKey !== this.#macKeyId)
      return tamper(
        "hmac-key",
        `HMAC key changed from ${this.#macKeyId} to ${rec.hmacKey} without a rotation record`,
        seq,
      );
    let macKeyId = rec.hmacKey;
    if (this.#checkMacs) {
      const key = keys.macKeys.get(rec.hmacKey);
      if (key === undefined) this.#missingKeyIds.add(rec.hmacKey);
      else if (key.mac(parts.body) !== parts.hmac)
        return tamper("hmac", "HMAC does not match the record", seq);
    }

    const hash = lineHash(line);
    if (rec.kind === "audit.key.rotation" || rec.kind === "checkpoint") {
      const full = this.#validate!(rec);
      if ("_tag" in full) return tamper("schema", full.message, seq);
      if (full.kind === "audit.key.rotation") {
        if (full.keyType === "hmac" && full.oldKeyId !== full.hmacKey)
          return tamper("hmac-key", "HMAC rotation does not start from the key that authenticates it", seq);
        if (full.keyType === "hmac") macKeyId = full.newKeyId;
        else {
          const next =
            full.publicKeyPem === undefined ? undefined : trustedKeyFromPem(full.publicKeyPem, "rotation");
          if (
            next === undefined ||
            "_tag" in next ||
            next.keyId !== full.newKeyId ||
            next.algorithm !== full.alg
          )
            return tamper("schema", "signing-key rotation does not carry the public key it names", seq);
          this.#pendingSigners.push(next.pem);
        }
      } else if (full.kind === "checkpoint") {
        const merkle = this.#merkle;
        const mismatch = checkpointMismatch(full, {
          segment: this.#task.segment,
          firstSeq: this.#segFirstSeq ?? seq,
          count: merkle.count,
          root: merkle.root().toString("hex"),
          prevCheckpoint: this.#prevCheckpoint ?? full.prevCheckpoint,
        });
        if (mismatch !== undefined)
          return tamper(
            mismatch.startsWith("Merkle")
              ? "merkle"
              : mismatch.startsWith("prevCheckpoint")
                ? "checkpoint-chain"
                : "checkpoint",
            mismatch,
            seq,
          );
        if (this.#checkSigs) {
          const key = keys.trusted.get(full.signKey);
          if (key === undefined)
            this.#deferred = {
              line: i + 1,
              seq,
              signKey: full.signKey,
              alg: full.alg,
              body: parts.body,
              recordsBefore: this.#records,
              lastSeqBefore: this.#lastSeq,
            };
          else if (key.algorithm !== full.alg)
            return tamper(
              "signature",
              `key ${full.signKey} is ${key.algorithm}, checkpoint says ${full.alg}`,
              seq,
            );
          else if (!verifyCheckpointBody(parts.body, key))
            return tamper("signature", "checkpoint signature is invalid", seq);
        }
        this.#sealed = true;
        this.#prevCheckpoint = hash;
      }
    }
    this.#macKeyId = macKeyId;
    this.#seq = seq;
    this.#hash = hash;
    return Line.Ok;
  }
}

/** Decodes the complete lines in `bytes` (which ends with a newline, or is empty). */
export const decodeLines = (bytes: Uint8Array): { lines: string[]; badLine?: number } => {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lines = splitLines(b.toString("utf8"));
  return isUtf8(b) ? { lines } : { lines, badLine: firstNonUtf8Line(b) };
};

/** Where a chunk is: its bytes in the segment, and the line before it (none for the first). */
export interface ChunkTask {
  readonly task: SegmentTask;
  readonly from: number;
  readonly to: number;
  /** Where the line before the chunk starts; -1 for the segment's first chunk. */
  readonly prevFrom: number;
  /** 0-based file index of the chunk's first line. */
  readonly base: number;
}

/**
 * Checks one chunk of a segment on its own, from the state the line before it implies (or the
 * segment's start): pure, so chunks can go to several threads (verify.ts joins them).
 */
export const verifyChunk = (bytes: Uint8Array, c: ChunkTask, keys: SegmentKeys): ChunkResult => {
  const start =
    c.prevFrom < 0
      ? c.task.start
      : {
          ...pointAfter(
            Buffer.from(bytes.buffer, bytes.byteOffset + c.prevFrom, c.from - 1 - c.prevFrom).toString(),
          ),
          // No checkpoint inside a segment: a chunk continues the segment's checkpoint chain.
          prevCheckpoint: c.task.start.prevCheckpoint,
        };
  const check = new SegmentCheck(c.task, keys, start);
  const chunk = Buffer.from(bytes.buffer, bytes.byteOffset + c.from, c.to - c.from);
  if (isUtf8(chunk)) return check.chunkResult(start, check.bytesLines(chunk, c.base));
  const { lines, badLine } = decodeLines(chunk);
  return check.chunkResult(start, check.lines(lines, c.base, badLine));
};
