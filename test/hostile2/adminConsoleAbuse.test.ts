import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  encodeBind,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeExecute,
  encodeFunctionCall,
  encodeParse,
  encodeQuery,
  encodeSync,
  encodeTerminate,
} from "../../src/protocol/frontend.ts";
import { encodeCancelRequest, encodeStartup } from "../../src/protocol/startup.ts";
import { eventually, fieldsOf, frame, header, sleep, tcpTap } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * The admin console reached through the proxy's front door, by clients that do not play by its
 * rules: a non-admin identity asking for it (and case variants of its name, which must go to the
 * pools), an admin identity sending the extended protocol, COPY messages, FunctionCall,
 * multi-statement text, unknown and prototype-named SHOW targets, injection-ish text, malformed
 * Query messages (no terminator, embedded NUL, invalid UTF-8, a lying length) and oversized ones;
 * a cancel aimed at the console's key. Each answer must end with ReadyForQuery (or a FATAL and a
 * close, as docs/admin.md lists), the proxy must never reach PostgreSQL for the console, and every
 * console session must give its client slot back, however it ended.
 */

const ADMIN = "ops";
const OTHER = "mallory";
const MAX_MESSAGE = 64 * 1024;
const CAP = 6;

let proxy: TestProxy;
let tap: Awaited<ReturnType<typeof tcpTap>>;
beforeAll(async () => {
  tap = await tcpTap();
  const pgInfo = postgresInfo();
  proxy = await startProxy({
    upstream: { host: "127.0.0.1", port: tap.port, user: pgInfo.appRole, password: pgInfo.rolePassword },
    auth: { method: "trust" },
    admin: { identities: [ADMIN] },
    access: { grants: [{ identity: "*", databases: ["*"], role: pgInfo.appRole }] },
    limits: { maxClientConnections: CAP, maxMessageBytes: MAX_MESSAGE, lingerMs: 200 },
    pool: { mode: "transaction", size: 2 },
    log: { level: "warn" },
  });
});
afterAll(async () => {
  await proxy?.close();
  await tap?.close();
});

const readies = (w: WireClient) => w.messages().filter((m) => m.type === "Z").length;
const errors = (w: WireClient) =>
  w
    .messages()
    .filter((m) => m.type === "E")
    .map((m) => fieldsOf(m.msg));

/** A raw console session, logged in (trust), at its first ReadyForQuery. */
const consoleSession = async (user = ADMIN, database = "pgwarden"): Promise<WireClient> => {
  const w = await WireClient.open(proxy.port);
  w.send(
    encodeStartup(
      new Map([
        ["user", user],
        ["database", database],
      ]),
    ),
  );
  await w.until((x) => readies(x) === 1 || x.errorCode() !== undefined || x.closed, 5000, "login");
  return w;
};

/** Sends `msgs`, then waits for `n` more ReadyForQuery (or a close). */
const send = async (w: WireClient, n: number, ...msgs: Buffer[]): Promise<void> => {
  const before = readies(w);
  w.send(...msgs);
  await w.until((x) => readies(x) >= before + n || x.closed, 5000, `${n} ReadyForQuery`);
};

const upstreamStartups = () => tap.connections.length;

describe("who may open the console", () => {
  it("a non-admin identity gets 28000 and PostgreSQL is never reached", async () => {
    const before = upstreamStartups();
    const w = await consoleSession(OTHER);
    await w.waitClosed();
    const e = errors(w)[0];
    expect(e?.get("S")).toBe("FATAL");
    expect(e?.get("C")).toBe("28000");
    expect(e?.get("M")).toBe(`access to database "pgwarden" is not granted to "${OTHER}"`);
    expect(readies(w)).toBe(0);
    await sleep(100);
    expect(upstreamStartups()).toBe(before);
  });

  it("the admin identity with a case variant of the name goes to the pools, not the console", async () => {
    const w = await consoleSession(ADMIN, "PGWARDEN");
    await w.until((x) => x.closed || x.errorCode() !== undefined, 5000, "upstream refusal");
    // PostgreSQL itself answers: no such database (3D000), proving it was not the console.
    expect(w.errorCode()).toBe("3D000");
    w.close();
  });
});

describe("access rules in front of the console", () => {
  it("a rule rejecting database pgwarden keeps even a listed admin identity out", async () => {
    const guarded = await startProxy({
      auth: { method: "trust" },
      admin: { identities: [ADMIN] },
      access: {
        rules: [
          { name: "no-console", databases: ["pgwarden"], action: "reject" },
          { name: "rest", action: "allow" },
        ],
      },
      log: { level: "warn" },
    });
    try {
      const w = await WireClient.open(guarded.port);
      w.send(
        encodeStartup(
          new Map([
            ["user", ADMIN],
            ["database", "pgwarden"],
          ]),
        ),
      );
      await w.waitClosed(3000);
      expect(w.errorCode()).toBe("28000");
      expect(readies(w)).toBe(0);
    } finally {
      await guarded.close();
    }
  });
});

describe("text on the console", () => {
  it("each odd command gets exactly one answer ending in ReadyForQuery, and the session carries on", async () => {
    const w = await consoleSession();
    const texts = [
      "SHOW POOLS; SHOW CLIENTS",
      "SHOW POOLS;;",
      "SHOW",
      "SHOW USERS",
      "SHOW __proto__",
      "SHOW constructor",
      "SHOW hasOwnProperty",
      "SHOW toString",
      "show\tpools\n",
      "SHOW POOLS' OR '1'='1",
      "'; DROP TABLE x; --",
      "SELECT 1",
      "KILL pgwarden",
      "SET client_encoding = 'LATIN1'",
      `SHOW ${"é".repeat(300)}`,
      `SHOW ${"😀".repeat(150)}`,
      " ; ",
      "",
      "SHOW VERSION",
    ];
    for (const t of texts) {
      const before = w.messages().length;
      await send(w, 1, encodeQuery(t));
      expect(w.closed, `closed after ${JSON.stringify(t)}`).toBe(false);
      const got = w.messages().slice(before);
      expect(got.at(-1)?.type, `answer to ${JSON.stringify(t)}`).toBe("Z");
      expect(got.filter((m) => m.type === "Z")).toHaveLength(1);
      const err = got.find((m) => m.type === "E");
      if (err !== undefined) {
        expect(fieldsOf(err.msg).get("S")).toBe("ERROR");
        expect(fieldsOf(err.msg).get("C")).toBe("42601");
      }
    }
    const pgOutput = w.messages().filter((m) => m.type === "T").length;
    // show\tpools\n and SHOW VERSION are the only valid ones.
    expect(pgOutput).toBe(2);
    w.close();
  });

  it("an echoed command is cut at 200 characters on a character boundary, never half a surrogate pair", async () => {
    const w = await consoleSession();
    try {
      await send(w, 1, encodeQuery(`x${"😀".repeat(150)}`));
      const m = w.messages().find((x) => x.type === "E")!;
      const message = fieldsOf(m.msg).get("M")!;
      // The cut falls inside the 100th emoji's surrogate pair: the half left becomes U+FFFD, a
      // character the client never sent. PostgreSQL cuts text on character boundaries
      // (pg_mbcliplen); PgBouncer echoes the command whole.
      expect(message).not.toContain("\uFFFD");
      expect(message).toMatch(/^invalid command 'x(😀)+\.\.\.', use SHOW HELP;$/);
    } finally {
      w.close();
    }
  });

  it("fifty commands pipelined in one write get fifty answers, in order", async () => {
    const w = await consoleSession();
    const batch = Array.from({ length: 50 }, (_, i) => encodeQuery(i % 2 === 0 ? "SHOW VERSION" : "nope"));
    await send(w, 50, ...batch);
    expect(readies(w)).toBe(51);
    expect(errors(w)).toHaveLength(25);
    w.close();
  });
});

describe("messages the console refuses", () => {
  const fatalFor: Record<string, () => Buffer[]> = {
    "Parse/Bind/Execute/Sync": () => [
      encodeParse({ name: "", query: "SHOW POOLS", paramTypes: [] }),
      encodeBind({ portal: "", statement: "", paramFormats: [], params: [], resultFormats: [] }),
      encodeExecute({ portal: "", maxRows: 0 }),
      encodeSync(),
    ],
    "a lone Sync": () => [encodeSync()],
    CopyData: () => [encodeCopyData(Buffer.from("1\t2\n"))],
    CopyDone: () => [encodeCopyDone()],
    CopyFail: () => [encodeCopyFail("nope")],
    FunctionCall: () => [encodeFunctionCall({ functionOid: 1, argFormats: [], args: [], resultFormat: 0 })],
    "a Query without its terminating NUL": () => [frame(0x51, Buffer.from("SHOW POOLS"))],
    "a Query with text after an embedded NUL": () => [frame(0x51, Buffer.from("SHOW POOLS\0junk\0"))],
    "a Query whose length field says 3": () => [header(0x51, 3), Buffer.from("SHOW POOLS\0")],
    "a Query over limits.maxMessageBytes": () => [encodeQuery(`SHOW ${"x".repeat(MAX_MESSAGE)}`)],
    "a Query length of 2 GiB": () => [header(0x51, 0x7fffffff)],
    "an unknown type byte": () => [frame(0x00)],
  };
  for (const [what, msgs] of Object.entries(fatalFor)) {
    it(`${what}: FATAL 08P01, then the console closes the connection`, async () => {
      const w = await consoleSession();
      w.send(...msgs());
      await w.waitClosed(3000);
      const e = errors(w);
      expect(e).toHaveLength(1);
      expect(e[0]?.get("S")).toBe("FATAL");
      expect(e[0]?.get("C")).toBe("08P01");
      expect(readies(w)).toBe(1);
    });
  }

  it("a Query with invalid UTF-8 gets an answer or a FATAL, never silence", async () => {
    const w = await consoleSession();
    w.send(frame(0x51, Buffer.from([0x53, 0x48, 0x4f, 0x57, 0x20, 0xff, 0xfe, 0xc3, 0x00])));
    await w.until((x) => readies(x) === 2 || x.closed, 3000, "an answer");
    expect(errors(w)).toHaveLength(1);
    w.close();
  });
});

describe("console sessions and the client cap", () => {
  it("a cancel with the console's key cancels nothing and is closed; the console carries on", async () => {
    const w = await consoleSession();
    const k = w.messages().find((m) => m.type === "K")!;
    const pid = k.msg.readInt32BE(5);
    const secret = k.msg.subarray(9);
    const c = await WireClient.open(proxy.port);
    c.send(encodeCancelRequest(pid, secret));
    await c.waitClosed(3000);
    await send(w, 1, encodeQuery("SHOW VERSION"));
    expect(errors(w)).toHaveLength(0);
    w.close();
  });

  it("console sessions ended every way give their slots back: the cap admits again", async () => {
    const endings: ((w: WireClient) => void | Promise<void>)[] = [
      (w) => w.close(),
      (w) => w.send(encodeTerminate()),
      (w) => w.send(encodeParse({ name: "", query: "x", paramTypes: [] })),
      (w) => w.send(encodeQuery("SHOW POOLS").subarray(0, 7)),
      (w) => w.socket.end(),
      (w) => {
        w.send(encodeQuery(`SHOW ${"x".repeat(MAX_MESSAGE)}`));
      },
    ];
    // What earlier cases left has gone (they all closed or were closed).
    expect(
      await eventually(() => proxy.server.sessions.size === 0, 3000),
      `sessions left before: ${[...proxy.server.sessions.values()].map((c) => (c as unknown as { user?: string }).user)}`,
    ).toBe(true);
    for (let round = 0; round < 2; round++) {
      const ws = await Promise.all(Array.from({ length: CAP }, () => consoleSession()));
      expect(
        ws.every((w) => readies(w) === 1),
        "a console login failed under the cap",
      ).toBe(true);
      // Full: one more is refused.
      const extra = await consoleSession();
      await extra.until((x) => x.closed || x.errorCode() !== undefined, 3000, "refusal");
      expect(extra.errorCode()).toBe("53300");
      extra.close();
      await Promise.all(ws.map((w, i) => endings[i % endings.length]!(w)));
      await sleep(50);
      for (const w of ws) w.close();
      expect(
        await eventually(() => proxy.server.sessions.size === 0, 3000),
        `sessions left: ${proxy.server.sessions.size}`,
      ).toBe(true);
    }
    // And an ordinary client still gets in and reaches PostgreSQL.
    const c = new pg.Client({
      host: "127.0.0.1",
      port: proxy.port,
      user: "anyone",
      database: postgresInfo().appDatabase,
    });
    await c.connect();
    expect((await c.query("SELECT 1 AS one")).rows[0].one).toBe(1);
    await c.end();
  });
});
