import { createHash, hash } from "node:crypto";

/**
 * RFC 6962 (section 2.1) Merkle tree hash over SHA-256: leaf = H(0x00 ‖ d), node = H(0x01 ‖ l ‖ r),
 * an n-leaf tree splits at the largest power of two below n, the empty tree is H("").
 * Built incrementally so a segment's root needs no more memory than log2(n) hashes.
 *
 * Hashes are held as 32-character binary strings: one-shot hashing to a string and writing two
 * of them into a small dedicated buffer is several times cheaper than Buffer outputs, and the
 * writer and the verifier compute one leaf and about one node per record.
 */

const LEAF = Buffer.from([0]);

export const leafHash = (data: Uint8Array | string): Buffer => Buffer.from(leafBinary(data), "latin1");

const leafBinary = (data: Uint8Array | string): string =>
  typeof data === "string"
    ? hash("sha256", `\u0000${data}`, "binary")
    : createHash("sha256").update(LEAF).update(data).digest("binary");

const nodeStore = new ArrayBuffer(65);
const nodeView = new Uint8Array(nodeStore);
const nodeBuf = Buffer.from(nodeStore);
nodeView[0] = 1;
const nodeBinary = (left: string, right: string): string => {
  nodeBuf.write(left, 1, "latin1");
  nodeBuf.write(right, 33, "latin1");
  return hash("sha256", nodeView, "binary");
};

export const nodeHash = (left: Uint8Array, right: Uint8Array): Buffer => {
  if (left.length !== 32 || right.length !== 32)
    throw new RangeError("Merkle node children are 32-byte hashes");
  return Buffer.from(
    nodeBinary(Buffer.from(left).toString("latin1"), Buffer.from(right).toString("latin1")),
    "latin1",
  );
};

export const EMPTY_TREE_HASH: Buffer = createHash("sha256").digest();

/**
 * Streaming tree hash. Leaves enter left to right; the stack holds the roots of perfect
 * subtrees of strictly decreasing size, which is exactly the RFC's left-heavy split.
 */
export class MerkleAccumulator {
  #hashes: string[] = [];
  #sizes: number[] = [];
  #count = 0;

  get count(): number {
    return this.#count;
  }

  add(data: Uint8Array | string): void {
    this.#addBinary(leafBinary(data));
  }

  addLeafHash(leaf: Uint8Array): void {
    if (leaf.length !== 32) throw new RangeError("Merkle leaf hashes are 32 bytes");
    this.#addBinary(Buffer.from(leaf).toString("latin1"));
  }

  #addBinary(leaf: string): void {
    let h = leaf;
    let size = 1;
    while (this.#sizes.length > 0 && this.#sizes[this.#sizes.length - 1] === size) {
      this.#sizes.pop();
      h = nodeBinary(this.#hashes.pop()!, h);
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
    for (let i = this.#hashes.length - 2; i >= 0; i--) h = nodeBinary(this.#hashes[i]!, h);
    return Buffer.from(h, "latin1");
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
