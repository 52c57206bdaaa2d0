import { createHash } from "node:crypto";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { EMPTY_TREE_HASH, MerkleAccumulator, merkleRoot } from "../../src/audit/Merkle.ts";

// The RFC 6962 definition written out literally, independent of the implementation.
const sha = (...parts: Uint8Array[]) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};
const mth = (d: Uint8Array[]): Buffer => {
  const n = d.length;
  if (n === 0) return sha();
  if (n === 1) return sha(Uint8Array.of(0), d[0]!);
  let k = 1;
  while (k * 2 < n) k *= 2;
  return sha(Uint8Array.of(1), mth(d.slice(0, k)), mth(d.slice(k)));
};

describe("RFC 6962 Merkle tree hash", () => {
  it("hashes the empty tree to SHA-256 of the empty string", () => {
    expect(EMPTY_TREE_HASH.toString("hex")).toBe(
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    );
    expect(merkleRoot([])).toBe(EMPTY_TREE_HASH.toString("hex"));
  });

  it("hashes one leaf as H(0x00 || d) and splits three leaves as (2, 1)", () => {
    expect(merkleRoot([""])).toBe("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    const [a, b, c] = ["a", "b", "c"].map((s) => Buffer.from(s));
    const leaf = (x: Buffer) => sha(Uint8Array.of(0), x);
    const node = (l: Buffer, r: Buffer) => sha(Uint8Array.of(1), l, r);
    expect(merkleRoot([a!, b!, c!])).toBe(node(node(leaf(a!), leaf(b!)), leaf(c!)).toString("hex"));
  });

  test.prop([fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 70 })])(
    "the streaming accumulator equals the recursive definition",
    (leaves) => {
      expect(merkleRoot(leaves)).toBe(mth(leaves).toString("hex"));
    },
  );

  test.prop([fc.array(fc.string(), { minLength: 1, maxLength: 40 })])(
    "root() mid-stream is the root of the prefix and does not disturb the stream",
    (leaves) => {
      const acc = new MerkleAccumulator();
      leaves.forEach((l, i) => {
        acc.add(l);
        expect(acc.root().toString("hex")).toBe(
          mth(leaves.slice(0, i + 1).map((x) => Buffer.from(x))).toString("hex"),
        );
      });
      expect(acc.count).toBe(leaves.length);
    },
  );

  test.prop([fc.array(fc.string(), { maxLength: 70 }), fc.integer({ min: 0, max: 4 })])(
    "chunks of 2^k leaves summed apart and absorbed in order give the root of all the leaves",
    (leaves, k) => {
      const size = 2 ** k;
      const joined = new MerkleAccumulator();
      for (let at = 0; at < leaves.length; at += size) {
        const part = new MerkleAccumulator();
        for (const l of leaves.slice(at, at + size)) part.add(l);
        joined.absorb(part.subtrees(), part.count);
      }
      expect(joined.count).toBe(leaves.length);
      expect(joined.root().toString("hex")).toBe(mth(leaves.map((x) => Buffer.from(x))).toString("hex"));
    },
  );

  it("refuses subtrees that would not land where the split puts them", () => {
    const three = new MerkleAccumulator();
    for (const l of ["a", "b", "c"]) three.add(l);
    const two = new MerkleAccumulator();
    for (const l of ["d", "e"]) two.add(l);
    // 3 leaves then a perfect pair would make a tree the RFC's split does not.
    expect(() => three.absorb(two.subtrees(), 2)).toThrow(RangeError);
    expect(() => two.absorb(two.subtrees(), 3)).toThrow(RangeError);
  });
});
