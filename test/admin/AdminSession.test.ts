import { connect } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { adminWelcome } from "../../src/admin/AdminSession.ts";
import { answerAdminQuery, showFields } from "../../src/admin/commands.ts";
import type { AdminSource, ConfigRow } from "../../src/admin/snapshot.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { decodeFields, encodeAuthentication } from "../../src/protocol/backend.ts";
import { encodeParse, encodeQuery, encodeSync, encodeTerminate } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { runClient } from "../support/run.ts";
import { WireClient } from "../support/wire.ts";
import { startConsole, type TestConsole } from "./console.ts";
import { sampleSource } from "./fixtures.ts";

const startup = encodeStartup(
  new Map([
    ["user", "admin"],
    ["database", "pgwarden"],
  ]),
);

const errorOf = (w: WireClient, offset = 0) => {
  const e = w.messages(offset).find((m) => m.type === "E");
  if (e === undefined) return undefined;
  const f = decodeFields(e.msg);
  if (isPgwardenError(f)) throw new Error(f.message);
  return f;
};

/** Opens a raw connection and waits for the welcome's ReadyForQuery. */
const openRaw = async (c: TestConsole, extra: Buffer[] = []): Promise<WireClient> => {
  const w = await WireClient.open(c.port);
  w.send(startup, ...extra);
  await w.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "the welcome");
  return w;
};
const readyCount = (w: WireClient) => w.messages().filter((m) => m.type === "Z").length;

describe("serveAdmin with real clients", () => {
  let c: TestConsole;
  beforeAll(async () => {
    c = await startConsole(sampleSource());
  });
  afterAll(async () => {
    await c.close();
  });

  const psql = (...args: string[]) =>
    runClient(
      "psql",
      [
        "-X",
        "-A",
        "-F",
        "|",
        `host=127.0.0.1 port=${c.port} user=admin dbname=pgwarden sslmode=disable gssencmode=disable`,
        ...args,
      ],
      { timeoutMs: 20_000 },
    );

  it("psql -c 'SHOW POOLS' prints PgBouncer's header and the pool", async () => {
    const run = await psql("-c", "SHOW POOLS");
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const [header, row, count] = run.stdout.trim().split("\n");
    expect(header).toBe(
      showFields("pools")
        .map((f) => f.name)
        .join("|"),
    );
    expect(row).toBe("app|app_rw|3|1|0|0|2|0|1|4|0|0|1|2|500123|transaction|");
    expect(count).toBe("(1 row)");
  });

  it("psql runs several commands on one session and reports an unknown one as an error", async () => {
    const run = await psql("-c", "show version;", "-c", "SHOW lists", "-c", "bogus");
    expect(run.code).toBe(1);
    expect(run.stdout).toContain("pgwarden 0.1.0");
    expect(run.stdout).toContain("dns_pending|0");
    expect(run.stderr).toContain("ERROR:  invalid command 'bogus', use SHOW HELP;");
  });

  it("node-postgres reads SHOW STATS with numeric columns and SHOW CLIENTS with int4 ones", async () => {
    const client = new pg.Client({ host: "127.0.0.1", port: c.port, user: "admin", database: "pgwarden" });
    await client.connect();
    try {
      const stats = await client.query("SHOW STATS");
      expect(stats.command).toBe("SHOW");
      expect(stats.fields.map((f) => f.name)).toEqual(showFields("stats").map((f) => f.name));
      expect(stats.fields.every((f, i) => i === 0 || f.dataTypeID === 1700)).toBe(true);
      expect(stats.rows[0]).toMatchObject({
        database: "app",
        total_received: "13000000000000",
        avg_recv: "13",
      });
      const clients = await client.query("show clients ; ");
      expect(clients.rows.map((r) => [r.state, r.port])).toEqual([
        ["active", 50000],
        ["idle", 50000],
      ]);
      await expect(client.query("SHOW USERS")).rejects.toMatchObject({ code: "42601" });
      const version = await client.query("SHOW VERSION");
      expect(version.rows).toEqual([{ version: "pgwarden 0.1.0" }]);
    } finally {
      await client.end();
    }
  });

  it("node-postgres with parameters (extended protocol) is refused with 08P01 and disconnected", async () => {
    const client = new pg.Client({ host: "127.0.0.1", port: c.port, user: "admin", database: "pgwarden" });
    client.on("error", () => {});
    await client.connect();
    const ended = new Promise<void>((resolve) => client.once("end", () => resolve()));
    await expect(client.query("SHOW POOLS WHERE $1", [1])).rejects.toMatchObject({
      code: "08P01",
      severity: "FATAL",
      message: "extended query protocol not supported by admin console",
    });
    await ended;
  });

  it("sends the welcome PgBouncer sends: parameters, a cancel key, ReadyForQuery idle", async () => {
    const w = await openRaw(c);
    const types = w.messages().map((m) => m.type);
    expect(types[0]).toBe("R");
    expect(types.slice(-2)).toEqual(["K", "Z"]);
    const params = w
      .messages()
      .filter((m) => m.type === "S")
      .map((m) => m.msg.subarray(5).toString("utf8").split("\0").slice(0, 2));
    expect(Object.fromEntries(params)).toMatchObject({
      server_version: "0.1.0/pgwarden",
      client_encoding: "UTF8",
      standard_conforming_strings: "on",
    });
    w.close();
  });

  it("answers queries sent with the startup packet (the pending bytes) and pipelined ones in order", async () => {
    const w = await openRaw(c, [encodeQuery("SHOW VERSION")]);
    await w.until((x) => readyCount(x) === 2, 5000, "the pending query's answer");
    const before = w.received.length;
    w.send(encodeQuery("SHOW POOLS"), encodeQuery("nope"), encodeQuery("SHOW CONFIG"));
    await w.until((x) => readyCount(x) === 5, 5000, "three answers");
    const tags = w
      .messages(before)
      .filter((m) => m.type === "C" || m.type === "E")
      .map((m) => m.type);
    expect(tags).toEqual(["C", "E", "C"]);
    w.close();
  });

  it("Terminate closes the connection and ends the session", async () => {
    const w = await openRaw(c);
    const session = c.sessions.at(-1)!;
    w.send(encodeTerminate());
    await w.waitClosed();
    await session;
    expect(errorOf(w)).toBeUndefined();
  });

  it("logs the command's name, never its text", async () => {
    const w = await openRaw(c);
    w.send(encodeQuery("SHOW POOLS"), encodeQuery("SET password = 'hunter2'"));
    await w.until((x) => readyCount(x) === 3, 5000, "two answers");
    w.close();
    const lines = JSON.stringify(c.logs);
    expect(lines).toContain('"command":"SHOW POOLS"');
    expect(lines).toContain('"command":"invalid"');
    expect(lines).not.toContain("hunter2");
  });
});

describe("serveAdmin ending sessions", () => {
  let c: TestConsole;
  beforeAll(async () => {
    c = await startConsole(sampleSource(), { maxMessageBytes: 1024, closeGraceMs: 200 });
  });
  afterAll(async () => {
    await c.close();
  });

  it("a Query over maxMessageBytes gets FATAL 08P01 and a close", async () => {
    const w = await openRaw(c);
    const session = c.sessions.at(-1)!;
    w.send(encodeQuery(`SHOW ${"x".repeat(2000)}`));
    await w.waitClosed();
    await session;
    expect(errorOf(w)?.get("S")).toBe("FATAL");
    expect(errorOf(w)?.get("C")).toBe("08P01");
    expect(errorOf(w)?.get("M")).toContain("over the limit of 1024");
  });

  it("a Parse gets PgBouncer's extended-protocol refusal", async () => {
    const w = await openRaw(c);
    w.send(encodeParse({ name: "", query: "SHOW POOLS", paramTypes: [] }), encodeSync());
    await w.waitClosed();
    expect(errorOf(w)?.get("M")).toBe("extended query protocol not supported by admin console");
  });

  it("an unknown message type and a password message after login are violations", async () => {
    for (const bytes of [Buffer.from([0x01, 0, 0, 0, 4]), Buffer.from([0x70, 0, 0, 0, 5, 0])]) {
      const w = await openRaw(c);
      w.send(bytes);
      await w.waitClosed();
      expect(errorOf(w)?.get("C")).toBe("08P01");
    }
  });

  it("a client that vanishes mid-message ends the session quietly", async () => {
    const w = await openRaw(c);
    const session = c.sessions.at(-1)!;
    w.send(encodeQuery("SHOW POOLS").subarray(0, 7));
    await new Promise((r) => setTimeout(r, 50));
    w.close();
    await session;
  });

  it("a source that throws costs that command only", async () => {
    const broken: AdminSource = {
      ...sampleSource(),
      pools: () => {
        throw new Error("pool table unavailable");
      },
    };
    const b = await startConsole(broken);
    try {
      const w = await openRaw(b);
      w.send(encodeQuery("SHOW POOLS"), encodeQuery("SHOW VERSION"));
      await w.until((x) => readyCount(x) === 3, 5000, "two answers");
      expect(errorOf(w)?.get("C")).toBe("XX000");
      expect(w.messages().filter((m) => m.type === "D")).toHaveLength(1);
      expect(JSON.stringify(b.logs)).toContain("pool table unavailable");
      w.close();
    } finally {
      await b.close();
    }
  });
});

describe("serveAdmin deadlines", () => {
  it("ends a session idle past idleTimeoutMs with 57P05, and only then", async () => {
    const c = await startConsole(sampleSource(), { idleTimeoutMs: 300 });
    try {
      const w = await openRaw(c);
      // Activity resets the deadline: three commands 150 ms apart outlive one 300 ms period.
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 150));
        w.send(encodeQuery("SHOW VERSION"));
        await w.until((x) => readyCount(x) === i + 2, 2000, "an answer");
      }
      expect(w.closed).toBe(false);
      await w.waitClosed(2000);
      expect(errorOf(w)?.get("C")).toBe("57P05");
    } finally {
      await c.close();
    }
  });

  it("aborting the signal ends every session with 57P01", async () => {
    const stop = new AbortController();
    const c = await startConsole(sampleSource(), { signal: stop.signal });
    try {
      const a = await openRaw(c);
      const b = await openRaw(c);
      stop.abort();
      await Promise.all([a.waitClosed(), b.waitClosed()]);
      expect([errorOf(a)?.get("C"), errorOf(b)?.get("C")]).toEqual(["57P01", "57P01"]);
      await Promise.all(c.sessions);
      // A session that starts after the abort ends at once.
      const late = await WireClient.open(c.port);
      late.send(startup);
      await late.waitClosed();
      expect(errorOf(late)?.get("C")).toBe("57P01");
    } finally {
      await c.close();
    }
  });
});

describe("serveAdmin back-pressure", () => {
  it("stops reading while a client does not read its answers", async () => {
    // ~250 KB per SHOW CONFIG answer; 200 pipelined would be 50 MB if written without waiting.
    const config: ConfigRow[] = Array.from({ length: 2000 }, (_, i) => ({
      key: `setting_${i}`,
      value: "v".repeat(100),
      default: "",
      changeable: true,
    }));
    const source = sampleSource({ config: () => config });
    const answer = Buffer.concat(answerAdminQuery("SHOW CONFIG", source)).length;
    const welcome =
      encodeAuthentication({ kind: "Ok" }).length +
      Buffer.concat(adminWelcome(source.version, { processId: 1, secret: Buffer.alloc(4) })).length;
    const N = 200;
    const c = await startConsole(source);
    try {
      const socket = connect(c.port, "127.0.0.1");
      let received = 0;
      socket.on("data", (chunk: Buffer) => {
        received += chunk.length;
      });
      socket.write(startup);
      await until(() => received === welcome, "the welcome");
      socket.pause();
      socket.write(Buffer.concat(Array.from({ length: N }, () => encodeQuery("SHOW CONFIG"))));
      const server = c.sockets.at(-1)!;
      let peak = 0;
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 25));
        peak = Math.max(peak, server.writableLength);
      }
      // At most about one answer waits in pgwarden's memory; the rest stays in the client's socket.
      expect(peak).toBeLessThan(2 * answer);
      expect(server.bytesWritten).toBeLessThan((N / 4) * answer);
      socket.resume();
      await until(() => received === welcome + N * answer, `all ${N} answers`);
      socket.destroy();
    } finally {
      await c.close();
    }
  });
});

const until = async (pred: () => boolean, what: string, ms = 20_000): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};
