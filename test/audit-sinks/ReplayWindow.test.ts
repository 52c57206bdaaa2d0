import { describe, expect, it } from "vitest";
import { ReplayWindow } from "../../src/adapters/audit/ReplayWindow.ts";

const b = (s: string) => Buffer.from(s);
const texts = (w: ReplayWindow, at: number) => w.takeUnconfirmed(at).map((u) => u.data.toString());

describe("ReplayWindow", () => {
  it("hands back what was written within the span before the break, oldest first, once", () => {
    const w = new ReplayWindow(1000, 100);
    w.record(b("a"), 1, 0);
    w.record(b("b"), 1, 500);
    w.record(b("c"), 1, 1200);
    expect(texts(w, 1400)).toEqual(["b", "c"]);
    expect(texts(w, 1600)).toEqual([]);
  });

  it("keeps at most maxLines, dropping the oldest whole entries", () => {
    const w = new ReplayWindow(10_000, 5);
    w.record(b("a"), 3, 0);
    w.record(b("b"), 2, 1);
    w.record(b("c"), 2, 2);
    expect(w.takeUnconfirmed(3)).toEqual([
      { data: b("b"), lines: 2 },
      { data: b("c"), lines: 2 },
    ]);
  });

  it("keeps nothing when disabled", () => {
    const w = new ReplayWindow(0, 100);
    w.record(b("a"), 1, 0);
    expect(texts(w, 0)).toEqual([]);
  });
});
