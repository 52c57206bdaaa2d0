import type { CheckpointReason, SignatureAlgorithm } from "./AuditEvent.ts";
import { canonicalJson } from "./canonicalJson.ts";
import { appendMember, splitSignature } from "./recordLine.ts";
import { type Signer, type TrustedKey, verifySignature } from "./Signer.ts";

/**
 * A checkpoint closes a segment: it is the segment's last line, a chained record whose
 * signature covers the Merkle root of every earlier line of the segment and the hash of the
 * previous checkpoint, so segments form a signed chain of their own.
 */
export interface CheckpointFields {
  readonly segment: number;
  readonly firstSeq: number;
  readonly lastSeq: number;
  readonly count: number;
  readonly root: string;
  readonly prevCheckpoint: string;
  readonly reason: CheckpointReason;
  readonly alg: SignatureAlgorithm;
  readonly signKey: string;
  readonly tornBytes?: number;
}

/** Signs a checkpoint record (envelope and fields, no `sig`, no `hmac`); returns the body to HMAC. */
export const signCheckpoint = async (
  unsigned: Record<string, unknown> & { kind: "checkpoint" },
  signer: Signer,
): Promise<string> => {
  const signed = canonicalJson(unsigned);
  const sig = await signer.sign(Buffer.from(signed, "utf8"));
  return appendMember(signed, "sig", sig.toString("base64"));
};

/** Whether a checkpoint body (its line without the HMAC member) carries a valid signature by `key`. */
export const verifyCheckpointBody = (body: string, key: TrustedKey): boolean => {
  const parts = splitSignature(body);
  if (parts === undefined) return false;
  return verifySignature(key, Buffer.from(parts.signed, "utf8"), Buffer.from(parts.sig, "base64"));
};

export interface SegmentSummary {
  readonly segment: number;
  readonly firstSeq: number;
  readonly count: number;
  readonly root: string;
  readonly prevCheckpoint: string;
}

/** The first field of a checkpoint that disagrees with the segment it closes, as words. */
export const checkpointMismatch = (cp: CheckpointFields, actual: SegmentSummary): string | undefined => {
  if (cp.segment !== actual.segment)
    return `checkpoint names segment ${cp.segment}, file is segment ${actual.segment}`;
  if (cp.count !== actual.count) return `checkpoint counts ${cp.count} records, segment has ${actual.count}`;
  if (cp.firstSeq !== actual.firstSeq)
    return `checkpoint firstSeq ${cp.firstSeq}, segment starts at ${actual.firstSeq}`;
  if (cp.lastSeq !== cp.firstSeq + cp.count - 1)
    return `checkpoint lastSeq ${cp.lastSeq} disagrees with firstSeq+count-1`;
  if (cp.root !== actual.root) return "Merkle root does not match the segment's records";
  if (cp.prevCheckpoint !== actual.prevCheckpoint)
    return "prevCheckpoint does not match the previous checkpoint";
  return undefined;
};
