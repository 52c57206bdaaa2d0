import { isUtf8 } from "node:buffer";
import { randomBytes } from "node:crypto";
import { fc } from "@fast-check/vitest";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  decodeFields,
  encodeBind,
  encodeClose,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeDescribe,
  encodeExecute,
  encodeFunctionCall,
  encodeParse,
  encodePasswordMessage,
  encodeQuery,
  encodeSSLRequest,
  encodeStartup,
  frontendName,
} from "../../src/protocol/index.ts";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { splitMessages, WireClient } from "../support/wire.ts";

/**
 * Malformed traffic against a running proxy over real sockets. For every input an oracle written
 * from the protocol rules says what must happen: a FATAL ErrorResponse with a given SQLSTATE and
 * the connection closed, a silent close, or (for an incomplete but so far valid prefix) waiting.
 * After each case the session must be gone and a fresh connection must still work.
 */

const RUNS = { numRuns: 40 };
const DEFAULT_MAX_MESSAGE = 268_435_456;

let proxy: TestProxy;
let copyTable: string;
beforeAll(async () => {
  // Upstream as u_trust (trust in pg_hba): no SCRAM round trips, so each case costs little.
  proxy = await startProxy({
    upstream: { user: "u_trust" },
    auth: { method: "trust" },
    log: { level: "warn" },
  });
  copyTable = `fuzz_copy_${randomBytes(4).toString("hex")}`;
  const c = await directClient();
  await c.query(`CREATE TABLE ${copyTable} (a int, b text)`);
  await c.query(`GRANT ALL ON ${copyTable} TO u_trust`);
  await c.end();
});
afterAll(async () => {
  await proxy.close();
  const c = await directClient();
  await c.query(`DROP TABLE IF EXISTS ${copyTable}`);
  await c.end();
});

// Helpers ---------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const be32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
};
const header = (type: number, len: number): Buffer => Buffer.concat([Buffer.from([type]), be32(len)]);
const hex = (t: number) => `0x${t.toString(16)}`;

const parseMessages = splitMessages;

const fieldsOf = (msg: Buffer): Map<string, string> => {
  const f = decodeFields(msg);
  if (f instanceof Map) return f as Map<string, string>;
  throw new Error(`bad ErrorResponse: ${JSON.stringify(f)}`);
};

type Outcome =
  /** A FATAL ErrorResponse with this SQLSTATE (and message, when given), then the proxy closes. */
  | { answers: string; end: "error"; sqlstate: string; message?: string | RegExp }
  /** The proxy closes without a word. */
  | { answers: string; end: "closed" }
  /** A valid prefix: the proxy waits for more; the test closes the socket. */
  | { answers: string; end: "wait" }
  /** A complete, valid startup: out of scope here. */
  | { answers: string; end: "login" };

/** Checks what the proxy did with the bytes sent after `offset`, then closes the socket. */
const expectOutcome = async (c: WireClient, offset: number, want: Outcome): Promise<void> => {
  try {
    if (want.end === "wait") {
      await sleep(100);
      expect(c.closed).toBe(false);
    } else await c.waitClosed(2000);
    const got = c.received.subarray(offset);
    expect(got.subarray(0, want.answers.length).toString("latin1")).toBe(want.answers);
    const messages = parseMessages(got.subarray(want.answers.length));
    if (want.end !== "error") {
      expect(messages).toEqual([]);
      return;
    }
    expect(messages.map((m) => m.type)).toEqual(["E"]);
    const f = fieldsOf(messages[0]!.msg);
    expect(f.get("S")).toBe("FATAL");
    expect(f.get("V")).toBe("FATAL");
    expect(f.get("C")).toBe(want.sqlstate);
    if (typeof want.message === "string") expect(f.get("M")).toBe(want.message);
    else if (want.message !== undefined) expect(f.get("M")).toMatch(want.message);
  } finally {
    c.close();
  }
};

/** No session outlives its client, then a new client through the proxy still works. */
const expectHealthy = async (p: TestProxy): Promise<void> => {
  const deadline = Date.now() + 2000;
  while (p.server.sessions.size > 0 && Date.now() < deadline) await sleep(5);
  expect(p.server.sessions.size).toBe(0);
  const client = new pg.Client(p.connection());
  await client.connect();
  const r = await client.query("SELECT 1 AS one");
  expect(r.rows).toEqual([{ one: 1 }]);
  await client.end();
};

const startupPacket = () =>
  encodeStartup(
    new Map([
      ["user", "postgres"],
      ["database", "postgres"],
    ]),
  );

/** A raw connection through the proxy, past startup: returns it and the offset after ReadyForQuery. */
const openReady = async (p: TestProxy): Promise<{ c: WireClient; offset: number }> => {
  const c = await WireClient.open(p.port);
  c.send(startupPacket());
  await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
  const types = c.messages().map((m) => m.type);
  expect(types[0]).toBe("R");
  expect(types.at(-1)).toBe("Z");
  return { c, offset: c.received.length };
};

// First packets ---------------------------------------------------------------------------------

const SSL = 80877103;
const GSSENC = 80877104;
const CANCEL = 80877102;

/** Startup parameters the way the proxy reads them; undefined when malformed. */
const parseParams = (body: Buffer): Map<string, string> | undefined => {
  const params = new Map<string, string>();
  let p = 0;
  const next = (): string | undefined => {
    const nul = body.indexOf(0, p);
    if (nul < 0 || !isUtf8(body.subarray(p, nul))) return undefined;
    const s = body.toString("utf8", p, nul);
    p = nul + 1;
    return s;
  };
  for (;;) {
    const name = next();
    if (name === undefined) return undefined;
    if (name === "") break;
    if (params.has(name)) return undefined;
    const v = next();
    if (v === undefined) return undefined;
    params.set(name, v);
  }
  return p === body.length ? params : undefined;
};

/**
 * The protocol rules for the untagged first packet(s), written independently of the codec from
 * what PostgreSQL does: bad lengths get silence, a bad protocol version a FATAL (protocol 2 in
 * protocol 2's own format), bytes pipelined after an encryption request a FATAL 08P01.
 */
const firstPacketOutcome = (input: Buffer): Outcome => {
  const b = input;
  let answers = "";
  for (;;) {
    if (b.length >= 1 && b[0] === 0x16) return { answers, end: "closed" };
    if (b.length < 4) return { answers, end: "wait" };
    const len = b.readInt32BE(0);
    // PostgreSQL's limit excludes the length word.
    if (len < 8 || len - 4 > 10_000) return { answers, end: "closed" };
    if (b.length < len) return { answers, end: "wait" };
    const code = b.readInt32BE(4);
    const body = b.subarray(8, len);
    if (code === SSL || code === GSSENC) {
      if (body.length !== 0) return { answers, end: "error", sqlstate: "08P01" };
      answers += "N";
      if (b.length > len) {
        return {
          answers,
          end: "error",
          sqlstate: "08P01",
          message:
            code === SSL
              ? "received unencrypted data after SSL request"
              : "received unencrypted data after GSSAPI encryption request",
        };
      }
      return { answers, end: "wait" };
    }
    if (code === CANCEL) {
      // process id, then a 4..256-byte secret; an unknown key, or a bad length, gets silence.
      return { answers, end: "closed" };
    }
    const major = code >>> 16;
    const minor = code & 0xffff;
    const unsupported = `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.2`;
    if (major < 3) return { answers: `${answers}EFATAL:  ${unsupported}\n\0`, end: "closed" };
    if (major !== 3) return { answers, end: "error", sqlstate: "0A000", message: unsupported };
    const params = parseParams(body);
    if (params === undefined) return { answers, end: "error", sqlstate: "08P01" };
    const user = params.get("user");
    if (user === undefined || user === "") {
      return {
        answers,
        end: "error",
        sqlstate: "28000",
        message: "no PostgreSQL user name specified in startup packet",
      };
    }
    return { answers, end: "login" };
  }
};

const bytes = (maxLength: number, minLength = 0) =>
  fc.uint8Array({ minLength, maxLength }).map((u) => Buffer.from(u));
const anyInt32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
const lengthArb = fc.oneof(
  anyInt32,
  fc.integer({ min: -16, max: 64 }),
  fc.constantFrom(-(2 ** 31), -1, 0, 3, 4, 7, 8, 9, 10_000, 10_001, 2 ** 31 - 1),
);
const codeArb = fc.oneof(
  anyInt32,
  fc.constantFrom(SSL, GSSENC, CANCEL, 196608, 196610, 196611, 0x20000, 0x40000, (1234 << 16) | 5677),
);
/** Bodies for startup packets: NUL-separated tokens, sometimes well formed, mostly not. */
const paramBodyArb = fc
  .array(
    fc.oneof(fc.constantFrom("user", "database", "", "options", "_pq_.x"), fc.string({ maxLength: 6 })),
    {
      maxLength: 7,
    },
  )
  .chain((tokens) =>
    fc.constantFrom(
      Buffer.from(tokens.map((t) => `${t}\0`).join("")),
      Buffer.from(`${tokens.map((t) => `${t}\0`).join("")}\0`),
      Buffer.from(tokens.join("\0")),
    ),
  );

const firstPacketArb: fc.Arbitrary<Buffer> = fc.oneof(
  // Random bytes.
  bytes(64),
  // A random length, then anything.
  fc.tuple(lengthArb, bytes(32)).map(([len, rest]) => Buffer.concat([be32(len), rest])),
  // A length that fits, a request code, a garbage body; sometimes cut short or followed by more.
  fc
    .tuple(codeArb, bytes(80), fc.integer({ min: -6, max: 6 }), bytes(12))
    .map(([code, body, slack, extra]) => {
      const packet = Buffer.concat([be32(8 + body.length), be32(code), body]);
      return slack < 0
        ? packet.subarray(0, Math.max(0, packet.length + slack))
        : Buffer.concat([packet, extra.subarray(0, slack)]);
    }),
  // Startup packets (3.x) with malformed parameter lists.
  fc
    .tuple(fc.integer({ min: 0, max: 4 }), paramBodyArb)
    .map(([minor, body]) => Buffer.concat([be32(8 + body.length), be32(0x30000 + minor), body])),
  // SSLRequest answered N, then garbage.
  bytes(40).map((rest) => Buffer.concat([encodeSSLRequest(), rest])),
  // A direct-TLS ClientHello record.
  bytes(40).map((rest) => Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), rest])),
  // Lengths just around the limits.
  fc
    .tuple(fc.integer({ min: 9_990, max: 10_010 }), bytes(16))
    .map(([len, rest]) => Buffer.concat([be32(len), rest])),
);

describe("fuzzed first packets", () => {
  it("each gets the oracle's answer, the connection is closed within 2 s, the proxy keeps serving", async () => {
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(firstPacketArb, async (input) => {
        const want = firstPacketOutcome(input);
        fc.pre(want.end !== "login");
        const key = want.end === "error" ? `error ${want.sqlstate}` : want.end;
        seen.set(key, (seen.get(key) ?? 0) + 1);
        const c = await WireClient.open(proxy.port);
        c.send(input);
        await expectOutcome(c, 0, want);
        await expectHealthy(proxy);
      }),
      { numRuns: 50 },
    );
    // The generators reach errors and the waiting state (the rest is covered in the unit tests).
    expect(seen.get("error 08P01") ?? 0).toBeGreaterThan(0);
    expect(seen.get("wait") ?? 0).toBeGreaterThan(0);
  });

  it("closes on an oversized startup packet (10,005 bytes) without a word and without reading it, as PostgreSQL does", async () => {
    const c = await WireClient.open(proxy.port);
    c.send(Buffer.concat([be32(10_005), be32(196608)]));
    await expectOutcome(c, 0, { answers: "", end: "closed" });
    await expectHealthy(proxy);
  });

  it("accepts a startup packet of exactly 10000 bytes", async () => {
    const base = startupPacket();
    const pad = 10_000 - base.length - "application_name".length - 2;
    const packet = encodeStartup(
      new Map([
        ["user", "postgres"],
        ["database", "postgres"],
        ["application_name", "x".repeat(pad)],
      ]),
    );
    expect(packet.length).toBe(10_000);
    const c = await WireClient.open(proxy.port);
    c.send(packet);
    await c.until((x) => x.messages().some((m) => m.type === "Z" || m.type === "E"), 5000, "an answer");
    expect(c.messages().at(-1)!.type).toBe("Z");
    c.close();
    await expectHealthy(proxy);
  });
});

// After startup ---------------------------------------------------------------------------------

const LARGE = new Set([..."QPBFd"].map((ch) => ch.charCodeAt(0)));
const KNOWN = new Set([..."BCdcfDEHFPQSX"].map((ch) => ch.charCodeAt(0)));
const limitFor = (type: number, maxMessage: number) =>
  LARGE.has(type) ? maxMessage : type === 0x70 ? 65_535 : 10_000;

/** What the proxy must do with one client message header + the body bytes that follow it, in ready state. */
const readyOutcome = (type: number, len: number, available: number, maxMessage: number): Outcome => {
  // A type byte clients may not send is rejected on sight, whatever its length, as PostgreSQL does.
  if (!KNOWN.has(type))
    return { answers: "", end: "error", sqlstate: "08P01", message: `invalid frontend message type ${type}` };
  if (len < 4)
    return {
      answers: "",
      end: "error",
      sqlstate: "08P01",
      message: `invalid message length ${len} for message type ${hex(type)}`,
    };
  const limit = limitFor(type, maxMessage);
  if (len > limit) {
    return {
      answers: "",
      end: "error",
      sqlstate: "08P01",
      message: `message of type ${hex(type)} is ${len} bytes, over the limit of ${limit}`,
    };
  }
  if (available < len - 4) return { answers: "", end: "wait" };
  return {
    answers: "",
    end: "error",
    sqlstate: "08P01",
    message: `unexpected message type ${frontendName(type)} (${hex(type)}) in state ready.idle`,
  };
};

/** A type byte the protocol does not define for clients, or 'p', which is illegal once ready. */
const illegalTypeArb = fc.integer({ min: 0, max: 255 }).filter((t) => !KNOWN.has(t));

const garbageArb = fc.oneof(
  // Unknown type, consistent length, body complete or cut short.
  fc.tuple(illegalTypeArb, bytes(60), fc.option(fc.nat(), { nil: undefined })).map(([type, body, cut]) => ({
    type,
    len: 4 + body.length,
    body: cut === undefined ? body : body.subarray(0, cut % (body.length + 1)),
  })),
  // Unknown type, any length.
  fc.tuple(illegalTypeArb, lengthArb, bytes(30)).map(([type, len, body]) => ({ type, len, body })),
  // Any type with a length no message may have: under 4, or over every limit.
  fc
    .tuple(
      fc.integer({ min: 0, max: 255 }),
      fc.oneof(
        fc.integer({ min: -(2 ** 31), max: 3 }),
        fc.integer({ min: DEFAULT_MAX_MESSAGE + 1, max: 2 ** 31 - 1 }),
      ),
      bytes(20),
    )
    .map(([type, len, body]) => ({ type, len, body })),
  // Small-message types just over PostgreSQL's 10000-byte limit.
  fc
    .tuple(
      fc.constantFrom(..."CDEHScfX".split("").map((ch) => ch.charCodeAt(0))),
      fc.integer({ min: 10_001, max: 1 << 20 }),
    )
    .map(([type, len]) => ({ type, len, body: Buffer.alloc(0) })),
);

describe("fuzzed messages after a successful startup", () => {
  it("illegal types and impossible lengths end the session with 08P01; incomplete ones wait", async () => {
    await fc.assert(
      fc.asyncProperty(garbageArb, async ({ type, len, body }) => {
        const { c, offset } = await openReady(proxy);
        c.send(header(type, len), body);
        await expectOutcome(c, offset, readyOutcome(type, len, body.length, DEFAULT_MAX_MESSAGE));
        await expectHealthy(proxy);
      }),
      RUNS,
    );
  });

  it.each([
    ["an unknown type", 0x7a, 9, 5, "invalid frontend message type 122"],
    ["a password message once ready", 0x70, 9, 5, "invalid frontend message type 112"],
    ["a length under 4", 0x51, 3, 0, "invalid message length 3 for message type 0x51"],
    ["a negative length", 0x53, -1, 0, "invalid message length -1 for message type 0x53"],
    [
      "a Query over the default limit",
      0x51,
      2 ** 31 - 1,
      0,
      "message of type 0x51 is 2147483647 bytes, over the limit of 268435456",
    ],
    ["a Password over 65535, judged by its type alone", 0x70, 65_536, 0, "invalid frontend message type 112"],
    ["an unknown type, body still to come", 0x7a, 100, 10, "invalid frontend message type 122"],
    ["a Query, body still to come", 0x51, 100, 10, undefined],
  ] as const)("%s", async (_name, type, len, sent, message) => {
    const want = readyOutcome(type, len, sent, DEFAULT_MAX_MESSAGE);
    if (message === undefined) expect(want.end).toBe("wait");
    else expect(want).toEqual({ answers: "", end: "error", sqlstate: "08P01", message });
    const { c, offset } = await openReady(proxy);
    c.send(header(type, len), Buffer.alloc(sent, 0x41));
    await expectOutcome(c, offset, want);
    await expectHealthy(proxy);
  });

  it("a message cut short and then the client's close: the session ends, nothing hangs", async () => {
    const held = fc.constantFrom(..."QPBCDEFHSXcf".split("").map((ch) => ch.charCodeAt(0)));
    await fc.assert(
      fc.asyncProperty(held, fc.integer({ min: 5, max: 9_000 }), fc.nat(), async (type, len, cut) => {
        const { c, offset } = await openReady(proxy);
        const partial = Buffer.alloc(cut % (len - 4), 0x41);
        c.send(header(type, len), partial);
        await sleep(20);
        c.socket.end();
        await c.waitClosed(2000);
        expect(c.received.length).toBe(offset);
        await expectHealthy(proxy);
      }),
      { numRuns: 30 },
    );
  });

  it("a CopyData cut short and then the client's close: the server leg is ended too", async () => {
    const { c, offset } = await openReady(proxy);
    c.send(header(0x64, 5000), Buffer.alloc(100));
    await sleep(20);
    c.socket.end();
    await c.waitClosed(2000);
    expect(c.received.length).toBe(offset);
    await expectHealthy(proxy);
  });

  const copyMessageArb = fc.oneof(
    bytes(200).map((b) => encodeCopyData(b)),
    fc.constant(encodeCopyDone()),
    fc.string({ maxLength: 20 }).map((s) => encodeCopyFail(s.replaceAll("\0", ""))),
  );

  it("CopyData/CopyDone/CopyFail storms outside COPY are ignored, as PostgreSQL ignores them", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(copyMessageArb, { minLength: 1, maxLength: 60 }), async (storm) => {
        const { c, offset } = await openReady(proxy);
        c.send(...storm, encodeQuery("SELECT 42 AS answer"));
        await c.until((x) => x.messages(offset).some((m) => m.type === "Z"), 3000, "ReadyForQuery");
        const got = parseMessages(c.received.subarray(offset));
        expect(got.map((m) => m.type)).toEqual(["T", "D", "C", "Z"]);
        expect(got[1]!.msg.subarray(7).toString("latin1")).toBe("\0\0\0\x0242");
        expect(got[3]!.msg.toString("latin1", 5)).toBe("I");
        expect(c.closed).toBe(false);
        c.close();
        await expectHealthy(proxy);
      }),
      { numRuns: 30 },
    );
  });

  const notInCopyArb = fc.oneof(
    fc.constant(encodeQuery("SELECT 1")),
    fc.constant(encodeParse({ name: "", query: "SELECT 1", paramTypes: [] })),
    fc.constant(encodeBind({ portal: "", statement: "", paramFormats: [], params: [], resultFormats: [] })),
    fc.constant(encodeDescribe({ target: "S", name: "" })),
    fc.constant(encodeExecute({ portal: "", maxRows: 0 })),
    fc.constant(encodeClose({ target: "P", name: "" })),
    fc.constant(encodeFunctionCall({ functionOid: 177, argFormats: [], args: [], resultFormat: 0 })),
    fc.constant(encodePasswordMessage("hunter2")),
  );

  it("messages illegal during COPY FROM STDIN end the session with 08P01", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { maxLength: 20 }), notInCopyArb, async (rows, illegal) => {
        const { c, offset } = await openReady(proxy);
        c.send(encodeQuery(`COPY ${copyTable} FROM STDIN`));
        await c.until((x) => x.messages(offset).some((m) => m.type === "G"), 3000, "CopyInResponse");
        const afterCopyIn = c.received.length;
        // Valid rows first (a bad row would make PostgreSQL end the COPY itself), then the illegal message.
        c.send(...rows.map((r) => encodeCopyData(Buffer.from(`${r}\trow ${r}\n`))), illegal);
        await c.waitClosed(2000);
        const got = parseMessages(c.received.subarray(afterCopyIn));
        expect(got.length).toBeGreaterThan(0);
        const last = got.at(-1)!;
        expect(last.type).toBe("E");
        const f = fieldsOf(last.msg);
        expect(f.get("S")).toBe("FATAL");
        expect(f.get("C")).toBe("08P01");
        expect(f.get("M")).toBe(
          // 'p' is no message at all once authenticated; the others are messages out of turn.
          illegal[0] === 0x70
            ? "invalid frontend message type 112"
            : `unexpected message type ${frontendName(illegal[0]!)} (${hex(illegal[0]!)}) in state busy.copy.in`,
        );
        c.close();
        await expectHealthy(proxy);
      }),
      { numRuns: 30 },
    );
  });

  it("a Query without its NUL terminator gets PostgreSQL's own 08P01 ERROR and the session goes on", async () => {
    const { c, offset } = await openReady(proxy);
    c.send(Buffer.concat([header(0x51, 12), Buffer.from("SELECT 1")]));
    await c.until((x) => x.messages(offset).some((m) => m.type === "Z"), 3000, "ReadyForQuery");
    const got = parseMessages(c.received.subarray(offset));
    expect(got.map((m) => m.type)).toEqual(["E", "Z"]);
    const f = fieldsOf(got[0]!.msg);
    expect([f.get("S"), f.get("C"), f.get("M")]).toEqual(["ERROR", "08P01", "invalid string in message"]);
    const next = c.received.length;
    c.send(encodeQuery("SELECT 1"));
    await c.until((x) => x.messages(next).some((m) => m.type === "Z"), 3000, "ReadyForQuery");
    expect(parseMessages(c.received.subarray(next)).map((m) => m.type)).toEqual(["T", "D", "C", "Z"]);
    c.close();
    await expectHealthy(proxy);
  });
});

// Limits ----------------------------------------------------------------------------------------

describe("message size limits", () => {
  it("a Sync claiming 20000 bytes is refused as soon as its header arrives", async () => {
    const { c, offset } = await openReady(proxy);
    c.send(header(0x53, 20_000));
    await expectOutcome(c, offset, {
      answers: "",
      end: "error",
      sqlstate: "08P01",
      message: "message of type 0x53 is 20000 bytes, over the limit of 10000",
    });
    await expectHealthy(proxy);
  });

  it("a 2000-byte Query over limits.maxMessageBytes = 1024 is refused, naming the limit", async () => {
    const small = await startProxy({
      upstream: { user: "u_trust" },
      auth: { method: "trust" },
      limits: { maxMessageBytes: 1024 },
      log: { level: "warn" },
    });
    try {
      const { c, offset } = await openReady(small);
      const query = encodeQuery(`SELECT '${"x".repeat(1986)}'`);
      expect(query.readInt32BE(1)).toBe(2000);
      c.send(query);
      await expectOutcome(c, offset, {
        answers: "",
        end: "error",
        sqlstate: "08P01",
        message: "message of type 0x51 is 2000 bytes, over the limit of 1024",
      });
      // A Query of exactly 1024 bytes is fine.
      const { c: c2, offset: o2 } = await openReady(small);
      const fits = encodeQuery(`SELECT '${"x".repeat(1005)}' AS v`);
      expect(fits.readInt32BE(1)).toBe(1024);
      c2.send(fits);
      await c2.until((x) => x.messages(o2).some((m) => m.type === "Z"), 3000, "ReadyForQuery");
      expect(parseMessages(c2.received.subarray(o2)).map((m) => m.type)).toEqual(["T", "D", "C", "Z"]);
      c2.close();
      await expectHealthy(small);
    } finally {
      await small.close();
    }
  });

  /**
   * DataRow and CopyData from PostgreSQL are streamed, never buffered (serverSessionPolicy), and
   * limits.maxMessageBytes is documented as the largest *client* message pgwarden buffers. A row
   * larger than that limit must still reach the client.
   */
  it("rows from PostgreSQL larger than limits.maxMessageBytes stream through", async () => {
    const small = await startProxy({
      upstream: { user: "u_trust" },
      auth: { method: "trust" },
      limits: { maxMessageBytes: 1024 },
      log: { level: "warn" },
    });
    try {
      const client = new pg.Client(small.connection());
      client.on("error", () => {});
      await client.connect();
      try {
        const r = await client.query("SELECT repeat('x', 5000) AS v");
        expect(r.rows[0].v).toBe("x".repeat(5000));
      } finally {
        await client.end().catch(() => {});
      }
    } finally {
      await small.close();
    }
  });
});
