import { isUtf8 } from "node:buffer";
import { readFile } from "node:fs/promises";
import { AUDIT_SCHEMA_VERSION, validateRecord } from "./AuditEvent.ts";
import { checkpointMismatch, verifyCheckpointBody } from "./Checkpoint.ts";
import type { HmacKey, LineDigest } from "./HmacKey.ts";
import { MerkleAccumulator } from "./Merkle.ts";
import { HMAC_PREFIX, HMAC_SUFFIX_LENGTH, lineHash, splitHmac } from "./recordLine.ts";
import { type TrustedKey, trustedKeyFromPem } from "./Signer.ts";

/**
 * Verification of one segment file's text, given the chain state it must start from: pure, so
 * segments can be checked on several threads and joined in order (verify.ts). A record whose
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
  return isUtf8(bytes) ? { text } : { text, badLine: firstNonUtf8Line(bytes) };
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

/** Splits text into complete lines and the bytes after the last newline. */
export const splitLines = (text: string): { lines: string[]; tornBytes: number } => {
  const lines = text.split("\n");
  const last = lines.pop()!;
  return { lines, tornBytes: last.length === 0 ? 0 : Buffer.byteLength(last) };
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

export interface SegmentKeys {
  readonly macKeys: ReadonlyMap<string, HmacKey>;
  readonly trusted: ReadonlyMap<string, TrustedKey>;
}

export const verifySegmentText = (
  segment: SegmentText,
  task: SegmentTask,
  keys: SegmentKeys,
): SegmentResult => {
  const { text, badLine } = segment;
  const { lines, tornBytes } = splitLines(text);
  const file = task.file;
  const { instance, isLast } = task;
  const findings: Finding[] = [];
  const checkMacs = keys.macKeys.size > 0;
  const checkSigs = keys.trusted.size > 0;
  const missingKeyIds = new Set<string>();
  const pendingSigners: string[] = [];
  const merkle = new MerkleAccumulator();
  let { expectSeq, prevHash, prevCheckpoint, macKeyId } = task.start;
  let records = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  let segFirstSeq: number | undefined;
  let sealed = false;
  let deferred: DeferredSignature | undefined;
  // The fixed parts of the envelope, built once per key change rather than per record.
  const instancePart = `,"instance":${JSON.stringify(instance)},`;
  const idPart = `,"id":${JSON.stringify(`${instance}-`).slice(0, -1)}`;
  let keyPart = "";
  let keyFor: string | undefined;
  let macKey: HmacKey | undefined;

  const result = (): SegmentResult => ({
    findings,
    records,
    firstSeq,
    lastSeq,
    sealed,
    end: { expectSeq, prevHash, prevCheckpoint, macKeyId },
    ...(sealed || findings.some((f) => f.class === "tampered")
      ? {}
      : merkle.count > 0 || tornBytes > 0
        ? { unsealed: { fromSeq: segFirstSeq ?? expectSeq ?? 0, toSeq: lastSeq ?? 0, count: merkle.count } }
        : {}),
    missingKeyIds: [...missingKeyIds],
    pendingSigners,
    ...(deferred === undefined ? {} : { deferred }),
  });

  /**
   * The layout a verified writer produces, checked in place: the envelope members are found in
   * their canonical (sorted) order, each search starting where the previous one matched. Gives
   * the line's digests, or undefined to send the line to the full path.
   */
  const fast = (line: string): LineDigest | undefined => {
    if (expectSeq === undefined || prevHash === undefined || macKeyId === undefined) return undefined;
    const at = line.length - HMAC_SUFFIX_LENGTH;
    if (at < 2 || line.charCodeAt(0) !== 0x7b || !line.startsWith(HMAC_PREFIX, at) || !line.endsWith('"}'))
      return undefined;
    if (keyFor !== macKeyId) {
      keyFor = macKeyId;
      keyPart = `,"hmacKey":"${macKeyId}",`;
      macKey = keys.macKeys.get(macKeyId);
    }
    if (macKey === undefined) return undefined;
    const seqText = String(expectSeq);
    let p = line.indexOf(keyPart);
    if (p < 0) return undefined;
    p = line.indexOf(idPart, p);
    if (p < 0 || !endsWith(line, p + idPart.length, seqText, 0x22)) return undefined;
    p = line.indexOf(instancePart, p);
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
    const d = macKey.digestLine(line, HMAC_SUFFIX_LENGTH);
    return line.startsWith(d.mac, at + HMAC_PREFIX.length) ? d : undefined;
  };

  /**
   * Every check of a line at line index `i`, field by field, naming the first that fails: the
   * line's seq and record hash, or the result that ends the segment.
   */
  const checkFully = (i: number, line: string): { seq: number; hash: string } | SegmentResult => {
    const at = { file, line: i + 1 };
    const tamper = (check: FindingCheck, message: string, seq?: number): SegmentResult => {
      findings.push({ class: "tampered", check, ...at, ...(seq === undefined ? {} : { seq }), message });
      return result();
    };
    if (sealed) return tamper("after-checkpoint", "line after the segment's checkpoint");
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
    const seq = rec.seq;
    if (expectSeq !== undefined && seq !== expectSeq) {
      return tamper(
        "seq",
        seq > expectSeq
          ? `sequence gap: expected seq ${expectSeq}, found ${seq} (${seq - expectSeq} record(s) missing)`
          : `sequence out of order: expected seq ${expectSeq}, found ${seq}`,
        seq,
      );
    }
    if (prevHash !== undefined && rec.prev !== prevHash)
      return tamper(
        "prev",
        "prev does not match the hash of the previous line (it was altered, removed or reordered)",
        seq,
      );
    if (rec.instance !== instance || rec.id !== `${instance}-${seq}`)
      return tamper("instance", `record names instance ${String(rec.instance)}, id ${String(rec.id)}`, seq);
    const parts = splitHmac(line);
    if (parts === undefined || parts.hmac !== rec.hmac || typeof rec.hmacKey !== "string")
      return tamper("layout", "the hmac member is not the line's last, 64 hex digits", seq);
    if (macKeyId !== undefined && rec.hmacKey !== macKeyId)
      return tamper(
        "hmac-key",
        `HMAC key changed from ${macKeyId} to ${rec.hmacKey} without a rotation record`,
        seq,
      );
    macKeyId = rec.hmacKey;
    if (checkMacs) {
      const key = keys.macKeys.get(rec.hmacKey);
      if (key === undefined) missingKeyIds.add(rec.hmacKey);
      else if (key.mac(parts.body) !== parts.hmac)
        return tamper("hmac", "HMAC does not match the record", seq);
    }

    const hash = lineHash(line);
    if (rec.kind === "audit.key.rotation" || rec.kind === "checkpoint") {
      const full = validateRecord(rec);
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
          pendingSigners.push(next.pem);
        }
      } else if (full.kind === "checkpoint") {
        const mismatch = checkpointMismatch(full, {
          segment: task.segment,
          firstSeq: segFirstSeq ?? seq,
          count: merkle.count,
          root: merkle.root().toString("hex"),
          prevCheckpoint: prevCheckpoint ?? full.prevCheckpoint,
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
        if (checkSigs) {
          const key = keys.trusted.get(full.signKey);
          if (key === undefined)
            deferred = {
              line: i + 1,
              seq,
              signKey: full.signKey,
              alg: full.alg,
              body: parts.body,
              recordsBefore: records,
              lastSeqBefore: lastSeq,
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
        sealed = true;
        prevCheckpoint = hash;
      }
    }
    return { seq, hash };
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (i === badLine) {
      // A torn last line may end inside a character: only complete lines get here.
      findings.push({
        class: "tampered",
        check: "utf8",
        file,
        line: i + 1,
        message: "bytes that are not UTF-8",
      });
      return result();
    }
    let seq: number;
    let hash: string;
    const d = sealed || !checkMacs ? undefined : fast(line);
    if (d !== undefined) {
      seq = expectSeq!;
      hash = d.hash;
    } else {
      const r = checkFully(i, line);
      if ("findings" in r) return r;
      ({ seq, hash } = r);
    }
    if (!sealed) {
      merkle.addLeaf(hash);
      segFirstSeq ??= seq;
    }
    prevHash = hash;
    expectSeq = seq + 1;
    firstSeq ??= seq;
    lastSeq = seq;
    records++;
  }

  if (tornBytes > 0) {
    const message = `${tornBytes} byte(s) after the last complete line`;
    if (!isLast || sealed) {
      findings.push({ class: "tampered", check: "torn-line", file, line: lines.length + 1, message });
      return result();
    }
    findings.push({
      class: "incomplete",
      check: "torn-line",
      file,
      line: lines.length + 1,
      message: `${message} (a write torn by a crash)`,
    });
  }
  if (!sealed) {
    if (!isLast) {
      findings.push({
        class: "tampered",
        check: "unsealed-segment",
        file,
        line: lines.length,
        message: "segment ends without a checkpoint but is not the last",
      });
      return result();
    }
    if (merkle.count > 0 || tornBytes > 0) {
      const from = segFirstSeq ?? expectSeq ?? 0;
      findings.push({
        class: "incomplete",
        check: "unsealed-tail",
        file,
        message:
          merkle.count === 0
            ? "segment has no complete record and no checkpoint"
            : `${merkle.count} record(s) after the last checkpoint (seq ${from}..${lastSeq ?? 0}): chain intact, not signed`,
      });
    }
  }
  return result();
};
