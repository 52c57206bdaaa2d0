import { describe, expect, it } from "vitest";
import { type Cancellable, CancelRegistry } from "../../src/runtime/CancelRegistry.ts";

const target = (): Cancellable => ({ cancel: async () => {} });

describe("CancelRegistry", () => {
  it("finds each session by its own key when two share a PID, and forgets each on revoke", () => {
    const r = new CancelRegistry();
    const a = target();
    const b = target();
    const ka = r.issue(4242, 0, a);
    const kb = r.issue(4242, 0, b);
    const sa = r.keyData(ka).secret;
    const sb = r.keyData(kb).secret;
    expect(sa).toHaveLength(4);
    expect(r.size).toBe(2);
    expect(r.find(4242, Buffer.from(sa))).toBe(a);
    expect(r.find(4242, Buffer.from(sb))).toBe(b);
    r.revoke(ka);
    expect(r.find(4242, Buffer.from(sa))).toBeUndefined();
    expect(r.find(4242, Buffer.from(sb))).toBe(b);
    r.revoke(kb);
    expect(r.size).toBe(0);
    expect(r.find(4242, Buffer.from(sb))).toBeUndefined();
  });

  it("answers nothing for a wrong secret, a secret of another length or an unknown PID", () => {
    const r = new CancelRegistry();
    const k = r.keyData(r.issue(7, 2, target()));
    expect(k.secret).toHaveLength(32);
    const wrong = Buffer.from(k.secret);
    wrong[0] = (wrong[0]! + 1) & 0xff;
    expect(r.find(7, wrong)).toBeUndefined();
    expect(r.find(7, Buffer.from(k.secret).subarray(0, 4))).toBeUndefined();
    expect(r.find(8, Buffer.from(k.secret))).toBeUndefined();
  });

  it("gives keys secrets of their own, the same bytes each time they are sent, past a refill of the random pool", () => {
    const r = new CancelRegistry();
    const keys = Array.from({ length: 600 }, () => r.issue(1, 0, target()));
    const secrets = new Set(keys.map((k) => r.keyData(k).secret.toString("hex")));
    // 600 random 32-bit secrets: a repeat has probability ~4e-5.
    expect(secrets.size).toBe(600);
    const before = r.keyData(keys[0]!).secret;
    r.issue(1, 2, target());
    expect(r.keyData(keys[0]!).secret).toEqual(before);
  });

  it("takes a 4-byte secret only for a 3.0 key and a 32-byte one only for a 3.2 key, one flipped bit refused", () => {
    const r = new CancelRegistry();
    const a = target();
    const b = target();
    const short = r.keyData(r.issue(9, 0, a)).secret;
    const long = r.keyData(r.issue(9, 2, b)).secret;
    expect(r.find(9, short)).toBe(a);
    expect(r.find(9, long)).toBe(b);
    for (let bit = 0; bit < 32; bit++) {
      const flipped = Buffer.from(short);
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      expect(r.find(9, flipped)).toBeUndefined();
    }
    expect(r.find(9, long.subarray(0, 4))).toBeUndefined();
    expect(r.find(9, Buffer.concat([short, Buffer.alloc(28)]))).toBeUndefined();
  });

  it("issues pooled PIDs with the instance id in bits 30-21, never 0", () => {
    const r = new CancelRegistry();
    r.instanceId = 5;
    const k = r.issuePooled(0, target());
    expect(k.processId >>> 21).toBe(5);
    expect(k.processId & 0x1fffff).toBeGreaterThan(0);
  });
});
