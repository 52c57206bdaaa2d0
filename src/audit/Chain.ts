import type { AuditEvent, CheckpointReason, SignatureAlgorithm } from "./AuditEvent.ts";
import { AUDIT_SCHEMA_VERSION } from "./AuditEvent.ts";
import { signCheckpoint } from "./Checkpoint.ts";
import type { HmacKey } from "./HmacKey.ts";
import { MerkleAccumulator } from "./Merkle.ts";
import { type Envelope, recordJson } from "./recordJson.ts";
import { GENESIS_HASH } from "./recordLine.ts";
import type { Signer } from "./Signer.ts";

export { loadHmacKey } from "./HmacKey.ts";

/**
 * The record chain of one instance: numbers events, links each to the hash of the line before,
 * authenticates it with the HMAC key, and closes segments with signed checkpoints. Pure apart
 * from hashing; what is done with the lines (files, sinks) is the caller's.
 */

export interface ChainState {
  /** Seq the next record gets; the first record of an instance is 1. */
  readonly nextSeq: number;
  /** Record hash of the last line (recordLine.ts lineHash); 64 zeros before the first. */
  readonly prevHash: string;
  /** Number of the open segment; the first is 1. */
  readonly segment: number;
  /** Record hash of the last checkpoint line; 64 zeros before the first. */
  readonly prevCheckpoint: string;
}

export const GENESIS_STATE: ChainState = {
  nextSeq: 1,
  prevHash: GENESIS_HASH,
  segment: 1,
  prevCheckpoint: GENESIS_HASH,
};

export interface ChainedLine {
  readonly seq: number;
  readonly kind: string;
  /** Segment the line belongs to (a checkpoint belongs to the segment it closes). */
  readonly segment: number;
  /** The line, no newline. */
  readonly line: string;
  readonly hash: string;
}

export interface ChainOptions {
  readonly instance: string;
  readonly boot: string;
  readonly hmacKey: HmacKey;
  readonly state?: ChainState;
  /** Lines already in the open segment (resuming after a crash), oldest first. */
  readonly openSegmentLines?: readonly string[];
}

export class Chain {
  readonly instance: string;
  readonly boot: string;
  #key: HmacKey;
  #state: ChainState;
  #merkle = new MerkleAccumulator();
  #segmentFirstSeq: number;
  #segmentBytes = 0;
  #sealing = false;
  #lastBytes: Uint8Array = new Uint8Array(0);

  constructor(options: ChainOptions) {
    this.instance = options.instance;
    this.boot = options.boot;
    this.#key = options.hmacKey;
    this.#state = options.state ?? GENESIS_STATE;
    const open = options.openSegmentLines ?? [];
    this.#segmentFirstSeq = this.#state.nextSeq - open.length;
    for (const l of open) {
      this.#merkle.add(l);
      this.#segmentBytes += Buffer.byteLength(l) + 1;
    }
  }

  get state(): ChainState {
    return this.#state;
  }
  get hmacKeyId(): string {
    return this.#key.id;
  }
  /**
   * The UTF-8 bytes of the line chained last, so the writer copies them rather than encoding the
   * line again: a view of the HMAC key's buffer, valid only until the next line.
   */
  get lastBytes(): Uint8Array {
    return this.#lastBytes;
  }
  /** Records in the open segment so far. */
  get segmentCount(): number {
    return this.#merkle.count;
  }
  /** Bytes of the open segment's lines, newlines included. */
  get segmentBytes(): number {
    return this.#segmentBytes;
  }

  #push(fields: Record<string, unknown>, body?: string): ChainedLine {
    const s = this.#state;
    const text = body ?? recordJson(fields, this.#envelope());
    const { line, hash, bytes } = this.#key.seal(text);
    this.#lastBytes = bytes;
    const kind = fields.kind as string;
    const out: ChainedLine = { seq: s.nextSeq, kind, segment: s.segment, line, hash };
    if (kind === "checkpoint") {
      this.#state = { nextSeq: s.nextSeq + 1, prevHash: hash, segment: s.segment + 1, prevCheckpoint: hash };
      this.#merkle.reset();
      this.#segmentFirstSeq = s.nextSeq + 1;
      this.#segmentBytes = 0;
    } else {
      this.#state = { ...s, nextSeq: s.nextSeq + 1, prevHash: hash };
      this.#merkle.addLeaf(hash);
      this.#segmentBytes += bytes.length + 1;
    }
    return out;
  }

  #envelope(): Envelope {
    const s = this.#state;
    return {
      boot: this.boot,
      hmacKey: this.#key.id,
      id: `${this.instance}-${s.nextSeq}`,
      instance: this.instance,
      prev: s.prevHash,
      schema: AUDIT_SCHEMA_VERSION,
      seq: s.nextSeq,
    };
  }

  #assertOpen(): void {
    // The writer never interleaves; reaching this is a bug, not a runtime condition.
    if (this.#sealing) throw new Error("audit chain: append while a checkpoint is being signed");
  }

  /** Chains one event. The event is not validated here (validateEvent does that). */
  append(event: AuditEvent): ChainedLine {
    this.#assertOpen();
    return this.#push(event as unknown as Record<string, unknown>);
  }

  /**
   * Closes the open segment with a checkpoint signed by `signer`. No append may happen until
   * the promise settles.
   */
  async checkpoint(
    signer: Signer,
    reason: CheckpointReason,
    ts: string,
    extra: { readonly tornBytes?: number } = {},
  ): Promise<ChainedLine> {
    this.#assertOpen();
    this.#sealing = true;
    try {
      const s = this.#state;
      const count = this.#merkle.count;
      const fields = {
        kind: "checkpoint" as const,
        ts,
        segment: s.segment,
        firstSeq: this.#segmentFirstSeq,
        lastSeq: this.#segmentFirstSeq + count - 1,
        count,
        root: this.#merkle.root().toString("hex"),
        prevCheckpoint: s.prevCheckpoint,
        reason,
        alg: signer.algorithm,
        signKey: signer.keyId,
        ...(extra.tornBytes === undefined ? {} : { tornBytes: extra.tornBytes }),
      };
      const body = await signCheckpoint({ ...fields, ...this.#envelope(), kind: "checkpoint" }, signer);
      this.#sealing = false;
      return this.#push(fields, body);
    } finally {
      this.#sealing = false;
    }
  }

  /** Records the switch to `next` (authenticated by the current key) and uses `next` from then on. */
  rotateHmacKey(next: HmacKey, ts: string): ChainedLine {
    this.#assertOpen();
    const line = this.#push({
      kind: "audit.key.rotation",
      ts,
      keyType: "hmac",
      oldKeyId: this.#key.id,
      newKeyId: next.id,
    });
    this.#key = next;
    return line;
  }

  /**
   * Records that checkpoints after the next one are signed by `next`. Seal the segment with the
   * old signer right after, so the old key vouches for the new one.
   */
  announceSigner(
    oldKeyId: string,
    next: { keyId: string; algorithm: SignatureAlgorithm; publicKeyPem: string },
    ts: string,
  ): ChainedLine {
    this.#assertOpen();
    return this.#push({
      kind: "audit.key.rotation",
      ts,
      keyType: "signing",
      oldKeyId,
      newKeyId: next.keyId,
      alg: next.algorithm,
      publicKeyPem: next.publicKeyPem,
    });
  }
}
