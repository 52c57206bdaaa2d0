import { createHash, hash } from "node:crypto";

/**
 * RFC 6962 (section 2.1) Merkle tree hash over SHA-256: leaf = H(0x00 ‖ d), node = H(0x01 ‖ l ‖ r),
 * an n-leaf tree splits at the largest power of two below n, the empty tree is H("").
 * Built incrementally so a segment's root needs no more memory than log2(n) hashes.
 *
 * A record line's leaf hash is also its record hash (the next record's `prev`, recordLine.ts), so
 * the writer and the verifier hash each line once and hand the hex leaf to `addLeaf`. Hashes are
 * held as hex: a node writes its two children into a small dedicated buffer, which is several
 * times cheaper than concatenating Buffers.
 */

const LEAF = Buffer.from([0]);

/** H(0x00 ‖ data), hex: the leaf hash of `data`. */
export const leafHex = (data: Uint8Array | string): string =>
  typeof data === "string"
    ? hash("sha256", `\u0000${data}`, "hex")
    : createHash("sha256").update(LEAF).update(data).digest("hex");

export const leafHash = (data: Uint8Array | string): Buffer => Buffer.from(leafHex(data), "hex");

const nodeStore = new ArrayBuffer(65);
const nodeView = new Uint8Array(nodeStore);
const nodeBuf = Buffer.from(nodeStore);
nodeView[0] = 1;
const nodeHex = (left: string, right: string): string => {
  nodeBuf.write(left, 1, "hex");
  nodeBuf.write(right, 33, "hex");
  return hash("sha256", nodeView, "hex");
};

export const nodeHash = (left: Uint8Array, right: Uint8Array): Buffer => {
  if (left.length !== 32 || right.length !== 32)
    throw new RangeError("Merkle node children are 32-byte hashes");
  return Buffer.from(nodeHex(Buffer.from(left).toString("hex"), Buffer.from(right).toString("hex")), "hex");
};

export const EMPTY_TREE_HASH: Buffer = createHash("sha256").digest();

/** An accumulator's stack: roots of perfect subtrees, with their sizes in leaves, largest first. */
export interface MerkleSubtrees {
  readonly hashes: readonly string[];
  readonly sizes: readonly number[];
}

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

  /** Adds a leaf by its data. */
  add(data: Uint8Array | string): void {
    this.#push(leafHex(data));
  }

  /** Adds a leaf by its leaf hash, hex as `leafHex` gives it (the caller hashed the line already). */
  addLeaf(leafHexHash: string): void {
    // Hex decoding stops quietly at the first bad digit, which would give a wrong root silently.
    if (leafHexHash.length !== 64) throw new RangeError("Merkle leaf hashes are 64 hex digits");
    this.#push(leafHexHash);
  }

  /** The perfect subtrees so far, largest first: what `absorb` takes from another accumulator. */
  subtrees(): MerkleSubtrees {
    return { hashes: [...this.#hashes], sizes: [...this.#sizes] };
  }

  /**
   * Appends the `count` leaves another accumulator summarised as `subtrees`, as if added one by
   * one. That holds when this accumulator's count is a multiple of their largest subtree: then
   * each lands where the RFC's split would put it. Anything else is a caller's error.
   */
  absorb(subtrees: MerkleSubtrees, count: number): void {
    const { hashes, sizes } = subtrees;
    let total = 0;
    for (let i = 0; i < sizes.length; i++) {
      const size = sizes[i]!;
      if ((size & (size - 1)) !== 0 || (i > 0 && size >= sizes[i - 1]!))
        throw new RangeError("Merkle subtrees are decreasing powers of two");
      total += size;
    }
    if (
      total !== count ||
      hashes.length !== sizes.length ||
      (sizes.length > 0 && this.#count % sizes[0]! !== 0)
    )
      throw new RangeError("Merkle subtrees do not line up with the leaves so far");
    for (let i = 0; i < sizes.length; i++) this.#pushTree(hashes[i]!, sizes[i]!);
  }

  #push(leaf: string): void {
    this.#pushTree(leaf, 1);
  }

  /** Pushes a perfect subtree of `size` leaves, merging equal neighbours. */
  #pushTree(root: string, leaves: number): void {
    let h = root;
    let size = leaves;
    while (this.#sizes.length > 0 && this.#sizes[this.#sizes.length - 1] === size) {
      this.#sizes.pop();
      h = nodeHex(this.#hashes.pop()!, h);
      size *= 2;
    }
    this.#hashes.push(h);
    this.#sizes.push(size);
    this.#count += leaves;
  }

  /** The tree hash of the leaves so far; the accumulator stays usable. */
  root(): Buffer {
    if (this.#hashes.length === 0) return EMPTY_TREE_HASH;
    let h = this.#hashes[this.#hashes.length - 1]!;
    for (let i = this.#hashes.length - 2; i >= 0; i--) h = nodeHex(this.#hashes[i]!, h);
    return Buffer.from(h, "hex");
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
