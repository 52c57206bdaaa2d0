import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { EventBatcher, EventUnbatcher } from "../../src/audit/EventBatch.ts";
import type { Transition } from "../../src/machines/MachineRunner.ts";
import type { ProxyEvent } from "../../src/runtime/EventSink.ts";

const transition: fc.Arbitrary<Transition> = fc.record({
  connectionId: fc.string(),
  machine: fc.constantFrom("client", "server"),
  from: fc.constantFrom("ready.idle", "busy.simpleQuery", "startup.fresh", ""),
  to: fc.string({ maxLength: 3 }),
  cause: fc.constantFrom("Query", "ReadyForQuery", "Terminate"),
  at: fc.double({ noNaN: true }),
});
const statement: fc.Arbitrary<ProxyEvent> = fc
  .record(
    {
      kind: fc.constant("statement" as const),
      conn: fc.string(),
      message: fc.constantFrom("Query", "Parse", "Bind", "Execute", "FunctionCall", "Copy"),
      durationMs: fc.double({ noNaN: true }),
      outcome: fc.constantFrom("ok", "error", "cancelled"),
      server: fc.string(),
      sql: fc.string(),
      statementName: fc.string(),
      portal: fc.string(),
      paramCount: fc.nat(),
      paramFormats: fc.array(fc.constantFrom("text", "binary")),
      commandTag: fc.string(),
      rows: fc.nat(),
      sqlstate: fc.string({ minLength: 5, maxLength: 5 }),
    },
    { requiredKeys: ["kind", "conn", "message", "durationMs", "outcome"] },
    // Plain objects, as the proxy builds them (fast-check's records have no prototype).
  )
  .map((r) => ({ ...r })) as fc.Arbitrary<ProxyEvent>;
const other: fc.Arbitrary<ProxyEvent> = fc.oneof(
  statement,
  fc
    .record({
      kind: fc.constant("connectionAccepted" as const),
      conn: fc.string(),
      remote: fc.string(),
      local: fc.string(),
    })
    .map((r) => ({ ...r })),
);
const item = fc.oneof(
  transition.map((t) => ({ t })),
  other.map((e) => ({ e })),
);

/** Structured clone, as postMessage applies it. */
const overTheWire = <T>(v: T): T => structuredClone(v);

describe("audit event batches", () => {
  test.prop([fc.array(fc.array(item, { maxLength: 30 }), { maxLength: 6 })])(
    "give the pipeline every event in order, transitions as the objects they were, batch after batch",
    (batches) => {
      const batcher = new EventBatcher();
      const unbatcher = new EventUnbatcher();
      let time = 0;
      for (const items of batches) {
        const want: ProxyEvent[] = [];
        const times: number[] = [];
        for (const x of items) {
          time += 1.5;
          if ("t" in x) {
            batcher.addTransition(x.t, time);
            want.push({ kind: "transition", ...x.t });
          } else {
            batcher.add(x.e, time);
            want.push(x.e);
          }
          times.push(time);
        }
        expect(batcher.size).toBe(items.length);
        const b = batcher.take();
        if (items.length === 0) {
          expect(b).toBeUndefined();
          continue;
        }
        const wire = overTheWire(b!);
        // toStrictEqual: an absent member stays absent rather than coming back as undefined.
        expect(unbatcher.events(wire)).toStrictEqual(want);
        expect([...wire.times]).toEqual(times);
      }
    },
  );

  it("sends each word once, and transitions of a vocabulary it will not hold as objects", () => {
    const batcher = new EventBatcher();
    const t = (to: string): Transition => ({
      connectionId: "c1",
      machine: "client",
      from: "ready.idle",
      to,
      cause: "Query",
      at: 1,
    });
    batcher.addTransition(t("busy"), 1);
    batcher.addTransition(t("busy"), 2);
    expect(batcher.take()!.words).toEqual(["client", "ready.idle", "busy", "Query"]);
    batcher.addTransition(t("busy"), 3);
    expect(batcher.take()!.words).toEqual([]);
    for (let i = 0; i < 5000; i++) batcher.addTransition(t(`s${i}`), i);
    const b = batcher.take()!;
    expect(b.events.filter((e) => e === null)).toHaveLength(4092);
    expect(b.events.at(-1)).toEqual({ kind: "transition", ...t("s4999") });
  });

  it("sends the words of a batch that could not be delivered with the next one", () => {
    const batcher = new EventBatcher();
    const t: Transition = {
      connectionId: "c1",
      machine: "server",
      from: "idle",
      to: "active",
      cause: "Request",
      at: 2,
    };
    batcher.addTransition(t, 1);
    batcher.undelivered(batcher.take()!);
    batcher.addTransition(t, 2);
    // A pipeline that never saw the lost batch still decodes the next one.
    expect(new EventUnbatcher().events(overTheWire(batcher.take()!))).toEqual([{ kind: "transition", ...t }]);
  });
});
