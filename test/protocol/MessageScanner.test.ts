import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { isPgwardenError, type PgwardenError } from "../../src/errors.ts";
import {
  DROP,
  lengthTable,
  type MessageHandler,
  MessageScanner,
  NO_BODY,
  type ScanPolicy,
  typeSet,
  type Verdict,
} from "../../src/protocol/MessageScanner.ts";

// A stream model: messages with a type and a body; held (control) and streamed (data) types.

const HELD = [0x43, 0x5a, 0x54, 0x45, 0x53, 0x31, 0x4e, 0x41]; // C Z T E S 1 N A
const STREAMED = [0x44, 0x64]; // D d
const isStreamed = (t: number) => STREAMED.includes(t);

interface Msg {
  readonly type: number;
  readonly body: Buffer;
}

const frame = (m: Msg): Buffer => {
  const b = Buffer.alloc(5 + m.body.length);
  b[0] = m.type;
  b.writeInt32BE(4 + m.body.length, 1);
  m.body.copy(b, 5);
  return b;
};

const header = (type: number, len: number): Buffer => {
  const b = Buffer.alloc(5);
  b[0] = type;
  b.writeInt32BE(len, 1);
  return b;
};

/** Small bodies mostly, some far larger than the chunks they will be cut into. */
const bodyArb = fc.oneof(
  { weight: 5, arbitrary: fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 200, max: 4000 }), fc.integer({ min: 0, max: 255 }))
      .map(([n, seed]) => Buffer.from(Array.from({ length: n }, (_, i) => (seed + i * 7) & 0xff))),
  },
);
const msgArb: fc.Arbitrary<Msg> = fc.record({ type: fc.constantFrom(...HELD, ...STREAMED), body: bodyArb });
const streamArb = fc.array(msgArb, { minLength: 1, maxLength: 25 });

/** Cut positions in [0, length]: random (duplicates give empty chunks) or a fixed chunk size. */
type Cuts = { kind: "random"; points: number[] } | { kind: "every"; size: number };
const cutsArb: fc.Arbitrary<Cuts> = fc.oneof(
  fc.array(fc.nat(), { maxLength: 40 }).map((points) => ({ kind: "random" as const, points })),
  fc.integer({ min: 1, max: 64 }).map((size) => ({ kind: "every" as const, size })),
);

/** Splits into separately allocated chunks, as sockets deliver them; returns chunk end offsets too. */
const split = (input: Buffer, cuts: Cuts): { chunks: Buffer[]; ends: number[] } => {
  let points: number[];
  if (cuts.kind === "every") {
    points = [];
    for (let p = cuts.size; p < input.length; p += cuts.size) points.push(p);
  } else points = cuts.points.map((p) => p % (input.length + 1)).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  const ends: number[] = [];
  let prev = 0;
  for (const p of [...points, input.length]) {
    const c = Buffer.alloc(p - prev);
    input.copy(c, 0, prev, p);
    chunks.push(c);
    ends.push(p);
    prev = p;
  }
  return { chunks, ends };
};

const everyType = new Uint8Array(256).fill(1);
const policy = (max: (type: number) => number = () => 1 << 20): ScanPolicy => ({
  known: everyType,
  sender: "frontend",
  streamed: typeSet(...STREAMED),
  maxLength: lengthTable(max),
});

interface Run {
  calls: [number, Buffer][];
  out: Uint8Array[];
  error: PgwardenError | undefined;
  /** Index of the chunk whose scan returned the error. */
  errorAt: number;
  boundaries: boolean[];
}

const scanChunks = (chunks: Buffer[], verdict: (type: number, msg: Buffer) => Verdict, p = policy()): Run => {
  const calls: [number, Buffer][] = [];
  const handler: MessageHandler = (type, msg) => {
    calls.push([type, Buffer.from(msg)]);
    return verdict(type, msg);
  };
  const scanner = new MessageScanner(p, handler);
  const out: Uint8Array[] = [];
  const boundaries: boolean[] = [];
  for (let i = 0; i < chunks.length; i++) {
    const err = scanner.scan(chunks[i]!, out);
    if (err !== undefined) return { calls, out, error: err, errorAt: i, boundaries };
    boundaries.push(scanner.atBoundary);
  }
  return { calls, out, error: undefined, errorAt: -1, boundaries };
};

const forwardAll = (): Verdict => undefined;
const concat = (out: Uint8Array[]): Buffer => Buffer.concat(out);
const boundaryOffsets = (msgs: readonly Msg[]): Set<number> => {
  const s = new Set<number>([0]);
  let p = 0;
  for (const m of msgs) {
    p += 5 + m.body.length;
    s.add(p);
  }
  return s;
};

describe("MessageScanner over arbitrary chunking", () => {
  test.prop([streamArb, cutsArb], { numRuns: 300 })(
    "hands the handler exactly the held messages, whole and in order, and forwards every byte",
    (msgs, cuts) => {
      const input = Buffer.concat(msgs.map(frame));
      const { chunks, ends } = split(input, cuts);
      const run = scanChunks(chunks, forwardAll);
      expect(run.error).toBeUndefined();
      const expectedCalls = msgs.filter((m) => !isStreamed(m.type)).map((m) => [m.type, frame(m)]);
      expect(run.calls).toEqual(expectedCalls);
      // Same as one piece.
      const whole = scanChunks([Buffer.from(input)], forwardAll);
      expect(run.calls).toEqual(whole.calls);
      expect(concat(run.out)).toEqual(input);
      expect(concat(whole.out)).toEqual(input);
      // atBoundary tells exactly whether a chunk ended between messages.
      const offsets = boundaryOffsets(msgs);
      expect(run.boundaries).toEqual(ends.map((e) => offsets.has(e)));
    },
  );

  test.prop(
    [
      streamArb,
      cutsArb,
      fc.constantFrom(...HELD),
      fc.constantFrom(...HELD),
      fc.uint8Array({ maxLength: 30 }),
    ],
    {
      numRuns: 300,
    },
  )(
    "drops and replaces messages as the handler says, at any chunking",
    (msgs, cuts, dropType, replaceType, rep) => {
      fc.pre(dropType !== replaceType);
      const replacement = Buffer.concat([header(0x4e, 4 + rep.length), Buffer.from(rep)]);
      const verdict = (type: number): Verdict =>
        type === dropType ? DROP : type === replaceType ? replacement : undefined;
      const input = Buffer.concat(msgs.map(frame));
      const run = scanChunks(split(input, cuts).chunks, verdict);
      expect(run.error).toBeUndefined();
      const expected = Buffer.concat(
        msgs.map((m) =>
          isStreamed(m.type)
            ? frame(m)
            : m.type === dropType
              ? Buffer.alloc(0)
              : m.type === replaceType
                ? replacement
                : frame(m),
        ),
      );
      expect(concat(run.out)).toEqual(expected);
      expect(run.calls.every(([t]) => !isStreamed(t))).toBe(true);
      expect(run.calls.length).toBe(msgs.filter((m) => !isStreamed(m.type)).length);
      // DROP never puts an empty slice in the output.
      expect(run.out.every((o) => o.length > 0)).toBe(true);
    },
  );

  test.prop([streamArb, cutsArb, fc.constantFrom(...HELD)], { numRuns: 200 })(
    "a handler error stops the scan; what came before the rejected message is delivered",
    (msgs, cuts, rejectType) => {
      const at = msgs.findIndex((m) => m.type === rejectType);
      fc.pre(at >= 0);
      const rejection: PgwardenError = {
        _tag: "PgwardenError",
        code: "PGW_ILLEGAL_MESSAGE",
        sqlstate: "08P01",
        message: "rejected",
      };
      const input = Buffer.concat(msgs.map(frame));
      const run = scanChunks(split(input, cuts).chunks, (t) => (t === rejectType ? rejection : undefined));
      expect(run.error).toBe(rejection);
      const before = msgs.slice(0, at);
      expect(concat(run.out)).toEqual(Buffer.concat(before.map(frame)));
      expect(run.calls).toEqual(
        [...before.filter((m) => !isStreamed(m.type)), msgs[at]!].map((m) => [m.type, frame(m)]),
      );
    },
  );

  test.prop(
    [fc.array(fc.record({ type: fc.constantFrom(...STREAMED), body: bodyArb }), { minLength: 1 }), cutsArb],
    {
      numRuns: 200,
    },
  )(
    "never copies streamed bodies: every output piece is a view of its chunk, bar split 5-byte headers",
    (msgs, cuts) => {
      const input = Buffer.concat(msgs.map(frame));
      const { chunks } = split(input, cuts);
      const scanner = new MessageScanner(policy(), () => {
        throw new Error("a streamed message reached the handler");
      });
      const all: Uint8Array[] = [];
      for (const chunk of chunks) {
        const out: Uint8Array[] = [];
        expect(scanner.scan(chunk, out)).toBeUndefined();
        for (const piece of out) {
          if (piece.buffer !== chunk.buffer) {
            expect(piece.length).toBe(5);
            expect(STREAMED).toContain(piece[0]);
          }
        }
        all.push(...out);
      }
      expect(concat(all)).toEqual(input);
    },
  );
});

describe("MessageScanner zero-copy", () => {
  test.prop([streamArb], { numRuns: 200 })(
    "a chunk of whole messages forwarded as is comes out as one view of the chunk",
    (msgs) => {
      const input = Buffer.concat(msgs.map(frame));
      const chunk = Buffer.from(input);
      const out: Uint8Array[] = [];
      const scanner = new MessageScanner(policy(), () => undefined);
      expect(scanner.scan(chunk, out)).toBeUndefined();
      expect(out.length).toBe(1);
      expect(out[0]!.buffer).toBe(chunk.buffer);
      expect(out[0]!.byteOffset).toBe(chunk.byteOffset);
      expect(out[0]!.length).toBe(chunk.length);
      expect(scanner.atBoundary).toBe(true);
    },
  );

  it("forwards around a replaced message with views of the chunk", () => {
    const a = frame({ type: 0x43, body: Buffer.from("SELECT 1\0") });
    const b = frame({ type: 0x45, body: Buffer.from("bad\0") });
    const c = frame({ type: 0x5a, body: Buffer.from("I") });
    const chunk = Buffer.concat([a, b, c]);
    const rep = frame({ type: 0x4e, body: Buffer.from("x\0") });
    const out: Uint8Array[] = [];
    const seen: Buffer[] = [];
    const scanner = new MessageScanner(policy(), (t, m) => {
      seen.push(m);
      return t === 0x45 ? rep : undefined;
    });
    expect(scanner.scan(chunk, out)).toBeUndefined();
    expect(out.map((o) => Buffer.from(o))).toEqual([a, rep, c]);
    expect(out[0]!.buffer).toBe(chunk.buffer);
    expect(out[1]).toBe(rep);
    expect(out[2]!.buffer).toBe(chunk.buffer);
    // The handler saw views too, not copies.
    expect(seen.map((s) => s.buffer === chunk.buffer)).toEqual([true, true, true]);
  });
});

describe("MessageScanner length checks", () => {
  const badLengthArb = fc.integer({ min: -(2 ** 31), max: 3 });

  test.prop(
    [
      streamArb,
      fc.constantFrom(...HELD, ...STREAMED),
      badLengthArb,
      fc.uint8Array({ maxLength: 20 }),
      cutsArb,
    ],
    { numRuns: 300 },
  )("a length under 4 is PGW_PROTOCOL at any chunking", (msgs, type, len, tail, cuts) => {
    const good = Buffer.concat(msgs.map(frame));
    const input = Buffer.concat([good, header(type, len), Buffer.from(tail)]);
    const { chunks, ends } = split(input, cuts);
    const run = scanChunks(chunks, forwardAll);
    expect(run.error).toEqual({
      _tag: "PgwardenError",
      code: "PGW_PROTOCOL",
      sqlstate: "08P01",
      message: `invalid message length ${len} for message type 0x${type.toString(16)}`,
    });
    // Reported by the chunk that completes the bad header, not before, not after.
    expect(run.errorAt).toBe(ends.findIndex((e) => e >= good.length + 5));
    expect(run.calls).toEqual(msgs.filter((m) => !isStreamed(m.type)).map((m) => [m.type, frame(m)]));
  });

  test.prop([streamArb, fc.constantFrom(...HELD, ...STREAMED), fc.nat(), cutsArb], { numRuns: 300 })(
    "a length over the type's limit is PGW_MESSAGE_TOO_LARGE at any chunking",
    (msgs, type, over, cuts) => {
      const limit = (t: number) => (isStreamed(t) ? 5000 : 100 + t);
      const p = policy(limit);
      const valid = msgs.map((m) =>
        m.body.length + 4 <= limit(m.type) ? m : { type: m.type, body: m.body.subarray(0, 0) },
      );
      const good = Buffer.concat(valid.map(frame));
      const len = Math.min(limit(type) + 1 + over, 2 ** 31 - 1);
      const input = Buffer.concat([good, header(type, len), Buffer.alloc(10)]);
      const { chunks, ends } = split(input, cuts);
      const run = scanChunks(chunks, forwardAll, p);
      expect(run.error).toEqual({
        _tag: "PgwardenError",
        code: "PGW_MESSAGE_TOO_LARGE",
        sqlstate: "08P01",
        message: `message of type 0x${type.toString(16)} is ${len} bytes, over the limit of ${limit(type)}`,
      });
      expect(run.errorAt).toBe(ends.findIndex((e) => e >= good.length + 5));
      expect(run.calls).toEqual(valid.filter((m) => !isStreamed(m.type)).map((m) => [m.type, frame(m)]));
    },
  );

  it("accepts a message exactly at the limit", () => {
    const p = policy(() => 104);
    const m = frame({ type: 0x43, body: Buffer.alloc(100, 1) });
    const run = scanChunks([m.subarray(0, 3), m.subarray(3)], forwardAll, p);
    expect(run.error).toBeUndefined();
    expect(run.calls).toEqual([[0x43, m]]);
  });

  /**
   * Like a rejected message, a malformed header should not swallow the complete messages that
   * preceded it in the same chunk: with other chunking they are delivered, so the output must not
   * depend on where the socket happened to cut the stream (Session flushes it to the client, e.g.
   * an ErrorResponse PostgreSQL sent just before garbage).
   */
  test.prop([streamArb, badLengthArb, cutsArb], { numRuns: 200 })(
    "delivers the messages before a malformed header whatever the chunking",
    (msgs, len, cuts) => {
      const good = Buffer.concat(msgs.map(frame));
      const input = Buffer.concat([good, header(0x43, len)]);
      const run = scanChunks(split(input, cuts).chunks, forwardAll);
      expect(isPgwardenError(run.error)).toBe(true);
      expect(concat(run.out)).toEqual(good);
    },
  );
});

describe("MessageScanner: inspect", () => {
  it("hands uninspected types NO_BODY and inspected ones their bytes, forwarding both the same", () => {
    const q = Buffer.concat([Buffer.from("Q"), Buffer.from([0, 0, 0, 8]), Buffer.from("SEL\0")]);
    const s = Buffer.concat([Buffer.from("S"), Buffer.from([0, 0, 0, 4])]);
    const seen: [number, Buffer][] = [];
    const scanner = new MessageScanner({ ...policy(), inspect: typeSet(0x51) }, (type, msg) => {
      seen.push([type, msg]);
      return undefined;
    });
    const out: Uint8Array[] = [];
    expect(scanner.scan(Buffer.concat([q, s]), out)).toBeUndefined();
    expect(Buffer.concat(out)).toEqual(Buffer.concat([q, s]));
    expect(seen[0]).toEqual([0x51, q]);
    expect(seen[1]![0]).toBe(0x53);
    expect(seen[1]![1]).toBe(NO_BODY);
  });
});
