import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { Owed, OwedResponses } from "../../src/pool/OwedResponses.ts";

/** Any sequence of pushes and shifts behaves like a plain FIFO array of kinds. */
describe("OwedResponses", () => {
  const op = fc.oneof(
    fc.constant({ op: "push", kind: Owed.forward } as const),
    fc.constant({ op: "push", kind: Owed.skip } as const),
    fc.constant({ op: "shift" } as const),
    fc.constant({ op: "clear" } as const),
  );
  test.prop([fc.array(op, { maxLength: 400 })], { numRuns: 300 })("is a FIFO of kinds", (ops) => {
    const owed = new OwedResponses();
    const model: Owed[] = [];
    for (const o of ops) {
      if (o.op === "push") {
        owed.push(o.kind);
        model.push(o.kind);
      } else if (o.op === "shift") expect(owed.shift()).toBe(model.shift());
      else {
        owed.clear();
        model.length = 0;
      }
      expect(owed.size).toBe(model.length);
      expect(owed.peek()).toBe(model[0]);
    }
    owed.unsynced = false;
    expect(owed.settled).toBe(model.length === 0);
  });

  test.prop([fc.nat(50)])("settled needs nothing owed and no half-sent extended batch", (n) => {
    const owed = new OwedResponses();
    for (let i = 0; i < n; i++) owed.push(Owed.forward);
    owed.unsynced = true;
    expect(owed.settled).toBe(false);
    for (let i = 0; i < n; i++) owed.shift();
    expect(owed.settled).toBe(false);
    owed.unsynced = false;
    expect(owed.settled).toBe(true);
  });
});
