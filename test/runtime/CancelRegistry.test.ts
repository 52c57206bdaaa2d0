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
    expect(ka.secret).toHaveLength(4);
    expect(r.size).toBe(2);
    expect(r.find(4242, Buffer.from(ka.secret))).toBe(a);
    expect(r.find(4242, Buffer.from(kb.secret))).toBe(b);
    r.revoke(ka);
    expect(r.find(4242, Buffer.from(ka.secret))).toBeUndefined();
    expect(r.find(4242, Buffer.from(kb.secret))).toBe(b);
    r.revoke(kb);
    expect(r.size).toBe(0);
    expect(r.find(4242, Buffer.from(kb.secret))).toBeUndefined();
  });

  it("answers nothing for a wrong secret, a secret of another length or an unknown PID", () => {
    const r = new CancelRegistry();
    const k = r.issue(7, 2, target());
    expect(k.secret).toHaveLength(32);
    const wrong = Buffer.from(k.secret);
    wrong[0] = (wrong[0]! + 1) & 0xff;
    expect(r.find(7, wrong)).toBeUndefined();
    expect(r.find(7, Buffer.from(k.secret).subarray(0, 4))).toBeUndefined();
    expect(r.find(8, Buffer.from(k.secret))).toBeUndefined();
  });

  it("gives keys secrets of their own, even though small buffers share memory", () => {
    const r = new CancelRegistry();
    const keys = Array.from({ length: 200 }, () => r.issue(1, 0, target()));
    const secrets = new Set(keys.map((k) => k.secret.toString("hex")));
    // 200 random 32-bit secrets: a repeat has probability ~5e-6.
    expect(secrets.size).toBe(200);
    const before = Buffer.from(keys[0]!.secret);
    r.issue(1, 2, target());
    expect(keys[0]!.secret).toEqual(before);
  });

  it("issues pooled PIDs with the instance id in bits 30-21, never 0", () => {
    const r = new CancelRegistry();
    r.instanceId = 5;
    const k = r.issuePooled(0, target());
    expect(k.processId >>> 21).toBe(5);
    expect(k.processId & 0x1fffff).toBeGreaterThan(0);
  });
});
