import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeTerminate } from "../../src/protocol/frontend.ts";
import { encodeSSLRequest, encodeStartup } from "../../src/protocol/startup.ts";
import { boundary, fieldsOf, int32, sleep } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 8 (and the first-packet part of 10): for a bad first packet PostgreSQL often only logs
 * and closes, where pgwarden sent FATAL 08P01 (which made node-postgres' `connect(); end()` fail);
 * a second SSLRequest and a startup packet in the same write as the SSLRequest were accepted.
 * The same bytes go to PostgreSQL directly and through pgwarden; the answers must match.
 */

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy({ ...boundary(), auth: { method: "trust" }, log: { level: "warn" } });
});
afterAll(() => proxy.close());

const CANCEL = 80877102;

interface Answer {
  /** SSL answers, then messages; ErrorResponses by severity, code and message only. */
  readonly tokens: string[];
  readonly closed: boolean;
}

/** Splits what a server answered: one-byte SSL answers and whole messages. */
const tokensOf = (b: Buffer): string[] => {
  const out: string[] = [];
  let p = 0;
  while (p < b.length) {
    const type = String.fromCharCode(b[p]!);
    const len = p + 5 <= b.length ? b.readInt32BE(p + 1) : -1;
    if ((type === "N" || type === "S") && (len < 4 || len > 100_000)) {
      out.push(`ssl:${type}`);
      p += 1;
      continue;
    }
    if (len < 4 || p + 1 + len > b.length) {
      out.push(`partial:${b.subarray(p).toString("hex")}`);
      break;
    }
    const msg = b.subarray(p, p + 1 + len);
    if (type === "E") {
      const f = fieldsOf(msg);
      out.push(`E ${f.get("S")}/${f.get("V")} ${f.get("C")} ${f.get("M")}`);
    } else out.push(`${type} ${msg.subarray(5).toString("hex")}`);
    p += 1 + len;
  }
  return out;
};

/** Sends each element as its own write, 50 ms apart, then waits for the close (or 2 s). */
const exchange = async (port: number, writes: readonly Buffer[]): Promise<Answer> => {
  const c = await WireClient.open(port);
  try {
    for (const w of writes) {
      if (c.closed) break;
      c.send(w);
      await sleep(50);
    }
    await c.waitClosed(2000).catch(() => {});
    return { tokens: tokensOf(c.received), closed: c.closed };
  } finally {
    c.close();
  }
};

const startup = () =>
  encodeStartup(
    new Map([
      ["user", "alice"],
      ["database", postgresInfo().appDatabase],
    ]),
  );

const cases: [string, Buffer[]][] = [
  ["length 4", [Buffer.concat([int32(4), int32(0)])]],
  ["length 7", [Buffer.concat([int32(7), Buffer.alloc(3)])]],
  // PostgreSQL's MAX_STARTUP_PACKET_LENGTH (10,000) excludes the length word: 10,004 still waits.
  ["length 10,004, the largest PostgreSQL waits for", [Buffer.concat([int32(10_004), int32(196608)])]],
  ["length 10,005", [Buffer.concat([int32(10_005), int32(196608)])]],
  ["a Terminate where the startup packet belongs", [encodeTerminate()]],
  ["protocol 2.0", [Buffer.concat([int32(8), int32(2 << 16)])]],
  ["protocol 4.0", [Buffer.concat([int32(8), int32(4 << 16)])]],
  ["a CancelRequest without a key", [Buffer.concat([int32(12), int32(CANCEL), int32(1234)])]],
  [
    "a CancelRequest with a 300-byte key",
    [Buffer.concat([int32(312), int32(CANCEL), int32(1234), Buffer.alloc(300)])],
  ],
  [
    "an SSLRequest, then an unknown protocol",
    [encodeSSLRequest(), Buffer.concat([int32(8), int32(0x12345678)])],
  ],
  ["an SSLRequest, then length 4", [encodeSSLRequest(), Buffer.concat([int32(4), int32(0)])]],
  ["a second SSLRequest", [encodeSSLRequest(), encodeSSLRequest()]],
  ["a startup packet in the same write as the SSLRequest", [Buffer.concat([encodeSSLRequest(), startup()])]],
];

describe("first-packet errors answered as PostgreSQL answers them", () => {
  for (const [what, writes] of cases) {
    it(`${what}`, async () => {
      const direct = await exchange(postgresInfo().port, writes);
      const through = await exchange(proxy.port, writes);
      expect(through).toEqual(direct);
    });
  }

  it("says nothing at all for an invalid startup packet length", async () => {
    for (const bytes of [
      Buffer.concat([int32(4), int32(0)]),
      Buffer.concat([int32(10_005), int32(196608)]),
    ]) {
      const a = await exchange(proxy.port, [bytes]);
      expect(a).toEqual({ tokens: [], closed: true });
    }
  });

  it("a startup packet sent in the same write as the SSLRequest is refused as a violation", async () => {
    const a = await exchange(proxy.port, [Buffer.concat([encodeSSLRequest(), startup()])]);
    expect(a.closed).toBe(true);
    expect(a.tokens.some((t) => t.startsWith("R "))).toBe(false);
    expect(a.tokens.at(-1)).toMatch(/^E FATAL\/FATAL 08P01 /);
  });

  it("node-postgres' connect() followed at once by end() ends as it does against PostgreSQL", async () => {
    // That client sends a Terminate where the startup packet belongs; PostgreSQL closes without a
    // word and the connect never settles. An ErrorResponse would make it fail instead.
    const outcome = async (port: number): Promise<string> => {
      const c = new pg.Client({
        host: "127.0.0.1",
        port,
        user: "alice",
        database: postgresInfo().appDatabase,
      });
      c.on("error", () => {});
      const connecting = c.connect().then(
        () => "connected",
        (e: Error & { code?: string }) => `failed ${e.code ?? ""}: ${e.message}`,
      );
      await c.end().catch(() => {});
      return Promise.race([connecting, sleep(500).then(() => "pending")]);
    };
    for (let i = 0; i < 5; i++) expect(await outcome(proxy.port)).toBe(await outcome(postgresInfo().port));
  });
});
