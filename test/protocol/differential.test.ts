import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Bind,
  encodeBind,
  encodeClose,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeDescribe,
  encodeExecute,
  encodeFlush,
  encodeFunctionCall,
  encodeParse,
  encodeQuery,
  encodeStartup,
  encodeSync,
  encodeTerminate,
} from "../../src/protocol/index.ts";
import { directClient, postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { splitMessages, WireClient } from "../support/wire.ts";

/**
 * Differential tests: the same bytes sent to PostgreSQL directly and through pgwarden must come
 * back as the same bytes. Both legs log in as u_trust (trust in pg_hba), so apart from the
 * Authentication and BackendKeyData messages of the startup nothing may differ; the only field
 * masked is the backend PID inside NotificationResponse.
 */

let proxy: TestProxy;
let items: string;
let copyTable: string;
let channel: string;

beforeAll(async () => {
  proxy = await startProxy({
    upstream: { user: "u_trust" },
    auth: { method: "trust" },
    log: { level: "warn" },
  });
  const suffix = randomBytes(4).toString("hex");
  items = `diff_items_${suffix}`;
  copyTable = `diff_copy_${suffix}`;
  channel = `diff_chan_${suffix}`;
  const c = await directClient();
  await c.query(
    `CREATE TABLE ${items} (id int PRIMARY KEY, name text, price numeric(10,2), tags text[], data bytea)`,
  );
  await c.query(
    `INSERT INTO ${items} VALUES
       (1, 'apple', 1.50, '{red,fruit}', '\\x00ff'),
       (2, 'banana', 0.25, '{yellow}', NULL),
       (3, NULL, NULL, '{}', decode(repeat('ab', 100000), 'hex')),
       (4, 'dürüm', 12.00, NULL, '\\x')`,
  );
  await c.query(`CREATE TABLE ${copyTable} (a int, b text)`);
  await c.query(`GRANT ALL ON ${items}, ${copyTable} TO u_trust`);
  await c.end();
});

afterAll(async () => {
  await proxy?.close();
  const c = await directClient();
  await c.query(`DROP TABLE IF EXISTS ${items}, ${copyTable}`);
  await c.end();
});

// Helpers ---------------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Message {
  readonly type: string;
  readonly msg: Buffer;
}

const parseMessages = splitMessages;

/** Message types with runs collapsed: `H d×3000 c C Z`. */
const shape = (msgs: readonly Message[]): string => {
  const parts: string[] = [];
  let i = 0;
  while (i < msgs.length) {
    let j = i;
    while (j < msgs.length && msgs[j]!.type === msgs[i]!.type) j++;
    parts.push(j - i === 1 ? msgs[i]!.type : `${msgs[i]!.type}×${j - i}`);
    i = j;
  }
  return parts.join(" ");
};

/** The backend PID in NotificationResponse differs by construction; nothing else may. */
const mask = (m: Message): string => {
  if (m.type !== "A") return `${m.type} ${m.msg.subarray(1).toString("hex")}`;
  const copy = Buffer.from(m.msg);
  copy.fill(0, 5, 9);
  return `${m.type} ${copy.subarray(1).toString("hex")}`;
};

const fields = (m: Message): Map<string, string> => {
  const out = new Map<string, string>();
  for (const f of m.msg.toString("utf8", 5, m.msg.length - 1).split("\0"))
    if (f !== "") out.set(f[0]!, f.slice(1));
  return out;
};

const readyStatuses = (msgs: readonly Message[]): string =>
  msgs
    .filter((m) => m.type === "Z")
    .map((m) => String.fromCharCode(m.msg[5]!))
    .join("");

const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const int64 = (n: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(n);
  return b;
};

const bind = (b: Partial<Bind>): Buffer =>
  encodeBind({ portal: "", statement: "", paramFormats: [], params: [], resultFormats: [], ...b });

/** Opens a raw connection as u_trust and reads the startup up to ReadyForQuery. */
const open = async (
  port: number,
  minor = 0,
  extra: readonly (readonly [string, string])[] = [],
): Promise<{ c: WireClient; startup: Message[] }> => {
  const c = await WireClient.open(port);
  c.send(
    encodeStartup(
      new Map<string, string>([
        ["user", "u_trust"],
        ["database", "postgres"],
        ["application_name", "pgwarden-differential"],
        ...extra,
      ]),
      minor,
    ),
  );
  await c.until((x) => x.messages().some((m) => m.type === "Z" || m.type === "E"), 5000, "ReadyForQuery");
  const startup = parseMessages(c.received);
  expect(startup.at(-1)!.type).toBe("Z");
  return { c, startup };
};

/** One round of a script: bytes to send, then wait until `count` messages of `type` arrived in the script. */
interface Step {
  readonly send: readonly Buffer[];
  readonly type: string;
  readonly count: number;
}

const run = async (c: WireClient, steps: readonly Step[]): Promise<Message[]> => {
  const offset = c.received.length;
  for (const s of steps) {
    c.send(...s.send);
    await c.until(
      (x) => x.messages(offset).filter((m) => m.type === s.type).length >= s.count,
      10_000,
      `${s.count} × '${s.type}'`,
    );
  }
  // Anything the server (or proxy) sends beyond what was expected would show up here.
  await sleep(30);
  const got = parseMessages(Buffer.from(c.received.subarray(offset)));
  expect(got.at(-1)?.type).toBe("Z");
  return got;
};

/** Runs the script directly and through the proxy on fresh connections; returns the direct answer. */
const differential = async (steps: readonly Step[]): Promise<Message[]> => {
  const direct = await open(postgresInfo().port);
  const viaProxy = await open(proxy.port);
  try {
    const d = await run(direct.c, steps);
    const p = await run(viaProxy.c, steps);
    expect(shape(p)).toBe(shape(d));
    expect(p.map(mask)).toEqual(d.map(mask));
    return d;
  } finally {
    direct.c.close();
    viaProxy.c.close();
  }
};

const q = (sql: string, type = "Z", count = 1): Step => ({ send: [encodeQuery(sql)], type, count });

// Tests -----------------------------------------------------------------------------------------

describe("PostgreSQL directly and through pgwarden answer byte for byte alike", () => {
  it.each([
    ["3.0", 0, []],
    ["3.2", 2, []],
    ["3.3 (newer than either supports)", 3, []],
    ["3.2 with an unknown _pq_ option", 2, [["_pq_.pgwarden_test", "1"]]],
    ["3.0 with an unknown _pq_ option", 0, [["_pq_.pgwarden_test", "1"]]],
  ] as const)(
    "startup %s: the same messages in the same order, apart from R and K",
    async (_name, minor, extra) => {
      const direct = await open(postgresInfo().port, minor, extra);
      const viaProxy = await open(proxy.port, minor, extra);
      try {
        const strip = (ms: Message[]) => ms.filter((m) => m.type !== "R" && m.type !== "K");
        const d = strip(direct.startup);
        const p = strip(viaProxy.startup);
        // NegotiateProtocolVersion first, when the server sends one, then ParameterStatus…, ReadyForQuery.
        expect(p.map(mask)).toEqual(d.map(mask));
        expect(d.filter((m) => m.type === "S").length).toBeGreaterThanOrEqual(10);
        const params = new Map(
          p
            .filter((m) => m.type === "S")
            .map((m) => m.msg.toString("utf8", 5, m.msg.length - 1).split("\0") as [string, string]),
        );
        expect(params.get("session_authorization")).toBe("u_trust");
        expect(params.get("application_name")).toBe("pgwarden-differential");
        expect(readyStatuses(p)).toBe("I");
        // AuthenticationOk and one BackendKeyData on both sides, with secrets of the same size.
        const secretSizes: number[] = [];
        for (const side of [direct.startup, viaProxy.startup]) {
          expect(side.filter((m) => m.type === "R").map((m) => m.msg.toString("hex"))).toEqual([
            "520000000800000000",
          ]);
          const keys = side.filter((m) => m.type === "K");
          expect(keys.length).toBe(1);
          secretSizes.push(keys[0]!.msg.length - 9);
        }
        expect(secretSizes[1]).toBe(secretSizes[0]);
        expect(secretSizes[0]).toBe(minor >= 2 ? 32 : 4);
      } finally {
        direct.c.close();
        viaProxy.c.close();
      }
    },
  );

  it("simple queries: several statements with rows, a statement failing mid-string, a 200 kB value", async () => {
    const d = await differential([
      q(
        `SELECT id, name, price, tags FROM ${items} ORDER BY id; SELECT count(*) AS n FROM ${items}; VALUES (1, 'a'), (2, NULL)`,
      ),
      q("SELECT 1 AS a; SELECT 1/0; SELECT 2 AS b", "Z", 2),
      q(`SELECT data FROM ${items} WHERE id = 3`, "Z", 3),
    ]);
    expect(shape(d)).toBe("T D×4 C T D C T D×2 C Z T D C E Z T D C Z");
    expect(fields(d.find((m) => m.type === "E")!).get("C")).toBe("22012");
    const big = d.filter((m) => m.type === "D").at(-1)!;
    expect(big.msg.length).toBe(1 + 4 + 2 + 4 + "\\x".length + 200_000);
  });

  it("extended protocol: Parse/Describe/Bind/Execute with binary parameters and results, portal suspension, NULL", async () => {
    const d = await differential([
      {
        send: [
          encodeParse({
            name: "s1",
            query: `SELECT id, name, price, tags, data, $1::int8 * id AS scaled FROM ${items} WHERE id <= $2 ORDER BY id`,
            paramTypes: [20, 23],
          }),
          encodeDescribe({ target: "S", name: "s1" }),
          bind({
            portal: "p1",
            statement: "s1",
            paramFormats: [1],
            params: [int64(1000n), int32(4)],
            resultFormats: [1],
          }),
          encodeDescribe({ target: "P", name: "p1" }),
          encodeExecute({ portal: "p1", maxRows: 2 }),
          encodeExecute({ portal: "p1", maxRows: 0 }),
          encodeClose({ target: "P", name: "p1" }),
          encodeClose({ target: "S", name: "s1" }),
          encodeSync(),
        ],
        type: "Z",
        count: 1,
      },
      {
        send: [
          encodeParse({
            name: "",
            query: "SELECT $1::text IS NULL AS isnull, $2::bytea AS b",
            paramTypes: [25, 17],
          }),
          bind({ paramFormats: [0, 1], params: [null, Buffer.from([0, 1, 0xff])], resultFormats: [1, 1] }),
          encodeExecute({ portal: "", maxRows: 0 }),
          encodeSync(),
        ],
        type: "Z",
        count: 2,
      },
    ]);
    expect(shape(d)).toBe("1 t T 2 T D×2 s D×2 C 3×2 Z 1 2 D C Z");
    // Binary int8 result: 1000 * 4 in the last row.
    const rows = d.filter((m) => m.type === "D");
    const lastRow = rows[3]!.msg;
    expect(lastRow.readBigInt64BE(lastRow.length - 8)).toBe(4000n);
    // true as one binary byte, then the 3-byte bytea.
    expect(rows[4]!.msg.subarray(7).toString("hex")).toBe("00000001010000000300" + "01ff");
  });

  it("pipelined extended queries: an error in the middle, messages skipped until a late Sync, more pipelines", async () => {
    const d = await differential([
      {
        send: [
          encodeParse({ name: "", query: "SELECT $1::int4 + 1 AS n", paramTypes: [23] }),
          bind({ params: [Buffer.from("41")] }),
          encodeDescribe({ target: "P", name: "" }),
          encodeExecute({ portal: "", maxRows: 0 }),
          encodeParse({ name: "", query: "SELECT * FROM diff_no_such_table", paramTypes: [] }),
          bind({}),
          encodeExecute({ portal: "", maxRows: 0 }),
          encodeFlush(),
        ],
        type: "E",
        count: 1,
      },
      {
        send: [
          encodeSync(),
          encodeParse({ name: "", query: "SELECT 'after' AS late", paramTypes: [] }),
          bind({}),
          encodeExecute({ portal: "", maxRows: 0 }),
          encodeSync(),
        ],
        type: "Z",
        count: 2,
      },
      {
        send: [1, 2, 3].flatMap((i) => [
          encodeParse({ name: "", query: `SELECT ${i} * 10 AS v`, paramTypes: [] }),
          bind({ resultFormats: [1] }),
          encodeExecute({ portal: "", maxRows: 0 }),
          encodeSync(),
        ]),
        type: "Z",
        count: 5,
      },
    ]);
    expect(shape(d)).toBe("1 2 T D C E Z 1 2 D C Z 1 2 D C Z 1 2 D C Z 1 2 D C Z");
    expect(fields(d.find((m) => m.type === "E")!).get("C")).toBe("42P01");
    expect(readyStatuses(d)).toBe("IIIII");
  });

  it("COPY FROM STDIN: rows split across CopyData, a bad row, CopyFail", async () => {
    const d = await differential([
      q(`COPY ${copyTable} FROM STDIN`, "G", 1),
      {
        send: [
          encodeCopyData(Buffer.from("1\tone\n2\ttw")),
          encodeCopyData(Buffer.from("o\n3\t\\N\n")),
          encodeCopyDone(),
        ],
        type: "Z",
        count: 1,
      },
      q(`SELECT a, b FROM ${copyTable} ORDER BY a; DELETE FROM ${copyTable}`, "Z", 2),
      q(`COPY ${copyTable} FROM STDIN`, "G", 2),
      {
        send: [
          encodeCopyData(Buffer.from("x\ty\n")),
          encodeCopyData(Buffer.from("5\tfive\n")),
          encodeCopyDone(),
        ],
        type: "Z",
        count: 3,
      },
      q(`COPY ${copyTable} FROM STDIN`, "G", 3),
      {
        send: [encodeCopyData(Buffer.from("7\tseven\n")), encodeCopyFail("client gave up")],
        type: "Z",
        count: 4,
      },
      q(`SELECT count(*) FROM ${copyTable}`, "Z", 5),
    ]);
    expect(shape(d)).toBe("G C Z T D×3 C×2 Z G E Z G E Z T D C Z");
    const commandTags = d
      .filter((m) => m.type === "C")
      .map((m) => m.msg.toString("utf8", 5, m.msg.length - 1));
    expect(commandTags).toEqual(["COPY 3", "SELECT 3", "DELETE 3", "SELECT 1"]);
    expect(d.filter((m) => m.type === "E").map((m) => fields(m).get("C"))).toEqual(["22P02", "57014"]);
    expect(d.at(-3)!.msg.subarray(7).toString("utf8")).toBe("\0\0\0\x010");
  });

  it("COPY TO STDOUT: 3000 text rows and a binary copy", async () => {
    const d = await differential([
      q("COPY (SELECT g, md5(g::text), repeat('z', g % 50) FROM generate_series(1, 3000) g) TO STDOUT"),
      q("COPY (SELECT g, g * 1.5 FROM generate_series(1, 100) g) TO STDOUT (FORMAT binary)", "Z", 2),
    ]);
    expect(shape(d)).toMatch(/^H d×3000 c C Z H d×10[0-2] c C Z$/);
    expect(d.filter((m) => m.type === "C").map((m) => m.msg.toString("utf8", 5, m.msg.length - 1))).toEqual([
      "COPY 3000",
      "COPY 100",
    ]);
  });

  it("an error inside a transaction block, commands refused until ROLLBACK", async () => {
    const d = await differential([
      q("BEGIN"),
      q(`INSERT INTO ${copyTable} VALUES (1, 'x')`, "Z", 2),
      q("SELECT 1/0", "Z", 3),
      q("SELECT 1", "Z", 4),
      q("ROLLBACK", "Z", 5),
      q(`SELECT count(*) FROM ${copyTable}`, "Z", 6),
    ]);
    expect(shape(d)).toBe("C Z C Z E Z E Z C Z T D C Z");
    expect(readyStatuses(d)).toBe("TTEEII");
    expect(d.filter((m) => m.type === "E").map((m) => fields(m).get("C"))).toEqual(["22012", "25P02"]);
  });

  it("empty queries, simple and extended", async () => {
    const d = await differential([
      q(""),
      q(";", "Z", 2),
      q("-- only a comment", "Z", 3),
      {
        send: [
          encodeParse({ name: "", query: "", paramTypes: [] }),
          bind({}),
          encodeExecute({ portal: "", maxRows: 0 }),
          encodeSync(),
        ],
        type: "Z",
        count: 4,
      },
    ]);
    expect(shape(d)).toBe("I Z I Z I Z 1 2 I Z");
  });

  it("NOTICE and WARNING from a DO block, ParameterStatus after SET", async () => {
    const d = await differential([
      q("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful: %', 'x'; END $$"),
      q("SET application_name = 'diff-renamed'", "Z", 2),
      q("RESET application_name", "Z", 3),
    ]);
    expect(shape(d)).toBe("N×2 C Z C S Z C S Z");
    const notices = d.filter((m) => m.type === "N").map((m) => [fields(m).get("S"), fields(m).get("M")]);
    expect(notices).toEqual([
      ["NOTICE", "hello 42"],
      ["WARNING", "careful: x"],
    ]);
  });

  it("FunctionCall of int4pl (oid 177), binary and text, and a wrong argument count", async () => {
    const d = await differential([
      {
        send: [
          encodeFunctionCall({
            functionOid: 177,
            argFormats: [1],
            args: [int32(40), int32(2)],
            resultFormat: 1,
          }),
        ],
        type: "Z",
        count: 1,
      },
      {
        send: [
          encodeFunctionCall({
            functionOid: 177,
            argFormats: [0],
            args: [Buffer.from("-7"), Buffer.from("10")],
            resultFormat: 0,
          }),
        ],
        type: "Z",
        count: 2,
      },
      {
        send: [encodeFunctionCall({ functionOid: 177, argFormats: [1], args: [int32(1)], resultFormat: 1 })],
        type: "Z",
        count: 3,
      },
    ]);
    expect(shape(d)).toBe("V Z V Z E Z");
    const results = d.filter((m) => m.type === "V").map((m) => m.msg.subarray(5).toString("hex"));
    expect(results).toEqual(["000000040000002a", `00000001${Buffer.from("3").toString("hex")}`]);
    expect(fields(d.find((m) => m.type === "E")!).get("C")).toBe("08P01");
  });

  it("LISTEN/NOTIFY: the NotificationResponse is relayed (backend PID masked)", async () => {
    const d = await differential([
      q(`LISTEN ${channel}; NOTIFY ${channel}, 'payload ✓'`),
      q("UNLISTEN *", "Z", 2),
    ]);
    expect(shape(d)).toBe("C×2 A Z C Z");
    const a = d.find((m) => m.type === "A")!.msg;
    expect(a.toString("utf8", 9)).toBe(`${channel}\0payload ✓\0`);
  });

  it("Terminate: both close without another byte", async () => {
    const direct = await open(postgresInfo().port);
    const viaProxy = await open(proxy.port);
    const sizes = [direct.c.received.length, viaProxy.c.received.length];
    direct.c.send(encodeTerminate());
    viaProxy.c.send(encodeTerminate());
    await direct.c.waitClosed(2000);
    await viaProxy.c.waitClosed(2000);
    expect([direct.c.received.length, viaProxy.c.received.length]).toEqual(sizes);
  });
});
