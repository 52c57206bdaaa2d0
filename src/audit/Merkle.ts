import { createHash, hash } from "node:crypto";

/**
 * RFC 6962 (section 2.1) Merkle tree hash over SHA-256: leaf = H(0x00 ‖ d), node = H(0x01 ‖ l ‖ r),
 * an n-leaf tree splits at the largest power of two below n, the empty tree is H("").
 * Built incrementally so a segment's root needs no more memory than log2(n) hashes.
 */

const LEAF = Buffer.from([0]);

export const leafHash = (data: Uint8Array | string): Buffer =>
  // One-shot hashing of a string is several times cheaper than a Hash object; the verifier's hot path.
  typeof data === "string"
    ? (hash("sha256", `\u0000${data}`, "buffer") as Buffer)
    : createHash("sha256").update(LEAF).update(data).digest();

const nodeInput = Buffer.alloc(65);
export const nodeHash = (left: Uint8Array, right: Uint8Array): Buffer => {
  if (left.length !== 32 || right.length !== 32)
    throw new RangeError("Merkle node children are 32-byte hashes");
  // One reused buffer and a one-shot hash: as many node hashes as leaves are computed.
  nodeInput[0] = 1;
  nodeInput.set(left, 1);
  nodeInput.set(right, 33);
  return hash("sha256", nodeInput, "buffer") as Buffer;
};

export const EMPTY_TREE_HASH: Buffer = createHash("sha256").digest();

/**
 * Streaming tree hash. Leaves enter left to right; the stack holds the roots of perfect
 * subtrees of strictly decreasing size, which is exactly the RFC's left-heavy split.
 */
export class MerkleAccumulator {
  #hashes: Buffer[] = [];
  #sizes: number[] = [];
  #count = 0;

  get count(): number {
    return this.#count;
  }

  add(data: Uint8Array | string): void {
    this.addLeafHash(leafHash(data));
  }

  addLeafHash(hash: Buffer): void {
    let h = hash;
    let size = 1;
    while (this.#sizes.length > 0 && this.#sizes[this.#sizes.length - 1] === size) {
      this.#sizes.pop();
      h = nodeHash(this.#hashes.pop()!, h);
      size *= 2;
    }
    this.#hashes.push(h);
    this.#sizes.push(size);
    this.#count++;
  }

  /** The tree hash of the leaves so far; the accumulator stays usable. */
  root(): Buffer {
    if (this.#hashes.length === 0) return EMPTY_TREE_HASH;
    let h = this.#hashes[this.#hashes.length - 1]!;
    for (let i = this.#hashes.length - 2; i >= 0; i--) h = nodeHash(this.#hashes[i]!, h);
    return h;
  }

  reset(): void {
    this.#hashes = [];
    this.#sizes = [];
    this.#count = 0;
  }
}

/** The tree hash of `leaves`, hex. */
export const merkleRoot = (leaves: Iterable<Uint8Array | string>): string => {
  const acc = new MerkleAccumulator();
  for (const l of leaves) acc.add(l);
  return acc.root().toString("hex");
};
