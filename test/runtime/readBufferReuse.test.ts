import { createHash } from "node:crypto";
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  markOwnBuffer,
  ownReadBuffer,
  READ_HELD,
  READ_WAITING,
  sinkReads,
} from "../../src/adapters/readBuffer.ts";
import { encodeQuery } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The server leg reads into one buffer per connection and reuses it once nothing refers to the
 * last read. A client that reads slowly leaves views of that buffer queued in its socket: were
 * the buffer reused then, the queued bytes would be overwritten by the next read. Every row
 * carries its own number and hash, so any overwritten byte shows.
 */
const ROWS = 400_000;
const QUERY = `SELECT i, md5(i::text) FROM generate_series(1, ${ROWS}) i`;

/** What the login and QUERY's answer consist of: R S K Z T D C E. */
const FRAMES = new Set([0x52, 0x53, 0x4b, 0x5a, 0x54, 0x44, 0x43, 0x45]);

/** Logs in, runs QUERY, reads the answer with pauses, and checks every row. */
const slowReadCheck = async (port: number): Promise<number> => {
  const socket = connect({ port, host: "127.0.0.1" });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.write(
    encodeStartup(
      new Map([
        ["user", "postgres"],
        ["database", "postgres"],
      ]),
    ),
  );
  let pending: Buffer = Buffer.alloc(0);
  let ready = 0;
  let rows = 0;
  let bad = 0;
  let sinceSleep = 0;
  let sawError = false;
  const done = new Promise<void>((resolve, reject) => {
    socket.on("error", reject);
    socket.on("close", () => reject(new Error("closed before the result was complete")));
    socket.on("data", (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      let pos = 0;
      while (pos + 5 <= pending.length) {
        const len = pending.readInt32BE(pos + 1);
        if (pos + 1 + len > pending.length) break;
        const type = pending[pos]!;
        // Overwritten bytes break the framing: fail at once rather than wait for a ReadyForQuery.
        if (!FRAMES.has(type) || len < 4 || len > 65_536) {
          reject(new Error(`the stream broke at row ${rows}: type ${type}, length ${len}`));
          return;
        }
        if (type === 0x44) {
          // DataRow: two text columns, i and md5(i).
          let p = pos + 7;
          const l1 = pending.readInt32BE(p);
          const i = pending.toString("latin1", p + 4, p + 4 + l1);
          p += 4 + l1;
          const l2 = pending.readInt32BE(p);
          const hash = pending.toString("latin1", p + 4, p + 4 + l2);
          rows++;
          if (Number(i) !== rows || hash !== createHash("md5").update(i).digest("hex")) bad++;
        } else if (type === 0x45) sawError = true;
        else if (type === 0x5a) {
          ready++;
          if (ready === 1) socket.write(encodeQuery(QUERY));
          else resolve();
        }
        pos += 1 + len;
      }
      pending = pending.subarray(pos);
      sinceSleep += chunk.length;
      if (ready === 1 && sinceSleep > 128 * 1024) {
        // Stop reading a while: pgwarden's writes to this client queue up meanwhile.
        sinceSleep = 0;
        socket.pause();
        void sleep(15).then(() => socket.resume());
      }
    });
  });
  await done;
  socket.removeAllListeners("close");
  socket.destroy();
  expect(sawError).toBe(false);
  expect(rows).toBe(ROWS);
  return bad;
};

describe("the server leg's read buffer", () => {
  let session: TestProxy;
  let pooled: TestProxy;
  beforeAll(async () => {
    session = await startProxy({ auth: { method: "trust" } });
    pooled = await startProxy({ auth: { method: "trust" }, pool: { mode: "transaction", size: 2 } });
  });
  afterAll(async () => {
    await session?.close();
    await pooled?.close();
  });

  it("is not reused while a slow client still has the last read queued (session mode)", async () => {
    expect(await slowReadCheck(session.port)).toBe(0);
  }, 60_000);

  it("is not reused while a slow client still has the last read queued (transaction mode)", async () => {
    expect(await slowReadCheck(pooled.port)).toBe(0);
  }, 60_000);
});

describe("ownReadBuffer", () => {
  let server: Server;
  let port = 0;
  let peer: Promise<Socket>;
  beforeAll(async () => {
    let accept!: (s: Socket) => void;
    peer = new Promise((r) => {
      accept = r;
    });
    server = createServer((s) => accept(s));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("copies reads out until a sink takes over, then reads into a small slot or a large buffer, never one still held", async () => {
    const socket = markOwnBuffer(connect({ port, host: "127.0.0.1", onread: ownReadBuffer() }));
    const writer = await peer;
    const write = async (text: string) => {
      writer.write(text);
      await sleep(30);
    };
    // Before a sink: `data` events, each a copy that stays as it was.
    const copies: Buffer[] = [];
    socket.on("data", (c: Buffer) => copies.push(c));
    await write("first");
    await write("second");
    expect(copies.map(String)).toEqual(["first", "second"]);

    // After the hand-over: views of the connection's own buffers, no copies.
    let flags = READ_WAITING;
    const seen: Buffer[] = [];
    const texts: string[] = [];
    expect(
      sinkReads(socket, {
        socketData: (c) => {
          seen.push(c);
          texts.push(c.toString());
        },
        afterRead: () => flags,
      }),
    ).toBe(true);
    const sameMemory = (a: Buffer, b: Buffer) => a.buffer === b.buffer && a.byteOffset === b.byteOffset;
    // `flags` is what the sink reports after the read that follows. The read already armed
    // when the sink took over lands in the login buffer: copied out.
    await write("aaaa");
    // The peer owes nothing: a small slot, read into again while nothing holds it.
    await write("bbbb");
    expect(sameMemory(seen[1]!, seen[0]!)).toBe(false);
    await write("cccc");
    expect(sameMemory(seen[2]!, seen[1]!)).toBe(true);
    expect(seen[1]!.toString()).toBe("cccc");
    // Held: the next read goes to another slot (and, being short, is copied out of it) and the
    // held one keeps its bytes.
    flags = READ_WAITING | READ_HELD;
    await write("dddd");
    expect(sameMemory(seen[3]!, seen[2]!)).toBe(true);
    flags = 0;
    await write("eeee");
    expect(sameMemory(seen[4]!, seen[3]!)).toBe(false);
    expect(seen[4]!.buffer.byteLength).not.toBe(4096);
    expect(seen[3]!.toString()).toBe("dddd");

    // The peer owes answers: a large buffer, read into again while nothing holds it, left alone
    // once something does.
    await write("ffff");
    expect(seen[5]!.buffer).not.toBe(seen[4]!.buffer);
    expect(seen[5]!.buffer.byteLength).toBe(65_536);
    expect(seen[5]!.byteOffset).toBe(0);
    flags = READ_HELD;
    await write("gggg");
    expect(sameMemory(seen[6]!, seen[5]!)).toBe(true);
    flags = READ_WAITING;
    await write("hhhh");
    expect(seen[7]!.buffer).not.toBe(seen[6]!.buffer);
    expect(seen[6]!.toString()).toBe("gggg");
    // Owing nothing again: back to a small slot of a slab.
    await write("iiii");
    expect(seen[8]!.buffer.byteLength).toBe(4096);
    expect(seen[8]!.buffer).not.toBe(seen[5]!.buffer);
    expect(texts).toEqual(["aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff", "gggg", "hhhh", "iiii"]);

    // A client that stops reading while small answers stream in: after the first held read,
    // short reads are copied out, and every later one lands in the same buffer again instead
    // of pinning 64 KiB each.
    flags = 0;
    await write("jjjj");
    flags = READ_HELD;
    for (const text of ["k1", "k2", "k3", "k4", "k5"]) await write(text);
    const [k1, k2, k3, k4, k5] = seen.slice(10);
    expect(k1!.buffer.byteLength).toBe(65_536);
    for (const copy of [k2!, k3!, k4!, k5!]) expect(copy.buffer).not.toBe(k1!.buffer);
    // Once the client's socket takes everything again, views again (the first read after is
    // still judged by the one before).
    flags = 0;
    for (const text of ["llll", "mmmm", "nnnn"]) await write(text);
    expect(sameMemory(seen[17]!, seen[16]!)).toBe(true);
    expect(seen[17]!.buffer.byteLength).toBe(65_536);
    expect(texts.slice(9)).toEqual(["jjjj", "k1", "k2", "k3", "k4", "k5", "llll", "mmmm", "nnnn"]);
    expect(k1!.toString()).toBe("k1");
    expect(copies.map(String)).toEqual(["first", "second"]);
    socket.destroy();
    writer.destroy();
  });

  it("leaves any other socket to `data` events", () => {
    const socket = connect({ port, host: "127.0.0.1" });
    expect(sinkReads(socket, { socketData: () => {}, afterRead: () => READ_WAITING })).toBe(false);
    socket.destroy();
  });
});
