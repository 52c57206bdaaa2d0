import { validateRecord } from "./AuditEvent.ts";
import { checkpointMismatch, verifyCheckpointBody } from "./Checkpoint.ts";
import type { HmacKey } from "./HmacKey.ts";
import { MerkleAccumulator } from "./Merkle.ts";
import { GENESIS_HASH, lineHash, splitHmac } from "./recordLine.ts";
import { type TrustedKey, trustedKeyFromPem } from "./Signer.ts";
import { listSegments, readSegmentLines, type SegmentFile } from "./segmentFiles.ts";

/**
 * Verifies a directory of segments: sequence, hash links, HMACs, Merkle roots, checkpoint
 * signatures and checkpoint chaining. Stops each instance's chain at its first tampered record
 * and names it; an unsealed tail or a missing segment makes the result incomplete.
 */

export type FindingClass = "tampered" | "incomplete";
export type FindingCheck =
  | "json"
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
}

export const EXIT_CODE: Record<VerifyStatus, number> = { intact: 0, tampered: 1, incomplete: 2 };

interface RecordView {
  schema?: unknown;
  id?: unknown;
  seq?: unknown;
  instance?: unknown;
  prev?: unknown;
  hmacKey?: unknown;
  hmac?: unknown;
  kind?: unknown;
  keyType?: unknown;
  oldKeyId?: unknown;
  newKeyId?: unknown;
  publicKeyPem?: unknown;
  alg?: unknown;
  signKey?: unknown;
}

const verifyInstance = async (
  instance: string,
  files: readonly SegmentFile[],
  options: VerifyOptions,
): Promise<InstanceReport> => {
  const findings: Finding[] = [];
  const macKeys = new Map((options.hmacKeys ?? []).map((k) => [k.id, k]));
  const checkMacs = macKeys.size > 0;
  const trusted = new Map((options.trustedKeys ?? []).map((k) => [k.keyId, k]));
  const checkSigs = trusted.size > 0;

  // undefined = unknown, after a missing segment: the link cannot be checked, only resumed.
  let expectSeq: number | undefined = 1;
  let prevHash: string | undefined = GENESIS_HASH;
  let prevCheckpoint: string | undefined = GENESIS_HASH;
  let macKeyId: string | undefined;
  let records = 0;
  let sealedSegments = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  let unsealed: InstanceReport["unsealed"];
  let expectSegment = 1;
  const missingKeyIds = new Set<string>();

  const report = (): InstanceReport => ({
    instance,
    segments: files.length,
    records,
    sealedSegments,
    ...(firstSeq === undefined ? {} : { firstSeq }),
    ...(lastSeq === undefined ? {} : { lastSeq }),
    ...(unsealed === undefined ? {} : { unsealed }),
    findings,
  });

  for (let f = 0; f < files.length; f++) {
    const file = files[f]!;
    const isLast = f === files.length - 1;
    if (file.segment !== expectSegment) {
      const range =
        file.segment - 1 === expectSegment ? `${expectSegment}` : `${expectSegment}..${file.segment - 1}`;
      findings.push({
        class: "incomplete",
        check: "missing-segment",
        file: file.name,
        message: `segment ${range} missing before this file; chain resumes unchecked here`,
      });
      expectSeq = undefined;
      prevHash = undefined;
      prevCheckpoint = undefined;
    }
    expectSegment = file.segment + 1;

    const { lines, tornBytes } = await readSegmentLines(file.path);
    const merkle = new MerkleAccumulator();
    let segFirstSeq: number | undefined;
    let sealed = false;
    const pendingSigners: TrustedKey[] = [];

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const at = { file: file.name, line: i + 1 };
      const tamper = (check: FindingCheck, message: string, seq?: number): InstanceReport => {
        findings.push({ class: "tampered", check, ...at, ...(seq === undefined ? {} : { seq }), message });
        return report();
      };
      if (sealed) return tamper("after-checkpoint", "line after the segment's checkpoint");
      let rec: RecordView;
      try {
        rec = JSON.parse(line) as RecordView;
      } catch {
        return tamper("json", "not valid JSON");
      }
      if (typeof rec !== "object" || rec === null || rec.schema !== 1 || typeof rec.seq !== "number")
        return tamper("layout", "not an audit record of schema 1");
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
        const key = macKeys.get(rec.hmacKey);
        if (key === undefined) missingKeyIds.add(rec.hmacKey);
        else if (key.mac(parts.body) !== parts.hmac)
          return tamper("hmac", "HMAC does not match the record", seq);
      }

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
            pendingSigners.push(next);
          }
        } else if (full.kind === "checkpoint") {
          const mismatch = checkpointMismatch(full, {
            segment: file.segment,
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
            const key = trusted.get(full.signKey);
            if (key === undefined)
              return tamper("signature", `checkpoint signed by untrusted key ${full.signKey}`, seq);
            if (key.algorithm !== full.alg)
              return tamper(
                "signature",
                `key ${full.signKey} is ${key.algorithm}, checkpoint says ${full.alg}`,
                seq,
              );
            if (!verifyCheckpointBody(parts.body, key))
              return tamper("signature", "checkpoint signature is invalid", seq);
            // A rotation sealed by a trusted key makes its new key trusted.
            for (const k of pendingSigners) trusted.set(k.keyId, k);
          }
          sealed = true;
          sealedSegments++;
          prevCheckpoint = lineHash(line);
        }
      }
      if (!sealed) {
        merkle.add(line);
        segFirstSeq ??= seq;
      }
      prevHash = lineHash(line);
      expectSeq = seq + 1;
      firstSeq ??= seq;
      lastSeq = seq;
      records++;
    }

    if (tornBytes > 0) {
      const message = `${tornBytes} byte(s) after the last complete line`;
      if (!isLast || sealed) {
        findings.push({
          class: "tampered",
          check: "torn-line",
          file: file.name,
          line: lines.length + 1,
          message,
        });
        return report();
      }
      findings.push({
        class: "incomplete",
        check: "torn-line",
        file: file.name,
        line: lines.length + 1,
        message: `${message} (a write torn by a crash)`,
      });
    }
    if (!sealed) {
      if (!isLast) {
        findings.push({
          class: "tampered",
          check: "unsealed-segment",
          file: file.name,
          line: lines.length,
          message: "segment ends without a checkpoint but is not the last",
        });
        return report();
      }
      if (merkle.count > 0 || tornBytes > 0) {
        unsealed = {
          file: file.name,
          fromSeq: segFirstSeq ?? expectSeq ?? 0,
          toSeq: lastSeq ?? 0,
          count: merkle.count,
        };
        findings.push({
          class: "incomplete",
          check: "unsealed-tail",
          file: file.name,
          message:
            merkle.count === 0
              ? "segment has no complete record and no checkpoint"
              : `${merkle.count} record(s) after the last checkpoint (seq ${unsealed.fromSeq}..${unsealed.toSeq}): chain intact, not signed`,
        });
      }
    }
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
  const byInstance = await listSegments(dir);
  const instances: InstanceReport[] = [];
  for (const [instance, files] of [...byInstance].sort(([a], [b]) => (a < b ? -1 : 1)))
    instances.push(await verifyInstance(instance, files, options));
  const all = instances.flatMap((i) => i.findings);
  const status: VerifyStatus = all.some((x) => x.class === "tampered")
    ? "tampered"
    : all.length > 0 || instances.length === 0
      ? "incomplete"
      : "intact";
  const unchecked: ("hmac" | "signature")[] = [];
  if ((options.hmacKeys ?? []).length === 0) unchecked.push("hmac");
  if ((options.trustedKeys ?? []).length === 0) unchecked.push("signature");
  return {
    status,
    instances,
    unchecked,
    records: instances.reduce((n, i) => n + i.records, 0),
    elapsedMs: performance.now() - started,
  };
};
