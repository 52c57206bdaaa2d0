import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { dataRow, msg, type PgSession, type Reply, typesOf } from "../support/pgSession.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  startTarget,
  steerTo,
  supports,
  targetMissing,
  warmPool,
} from "./target.ts";

/**
 * PgBouncer's prepared-statement scenarios in transaction mode, as raw protocol. The client must
 * see exactly what one dedicated PostgreSQL connection would answer, whichever server connection
 * runs each transaction; the pid of the backend is read inside the same pipeline to prove a move.
 */

const SIZE = 2;
const skip =
  targetMissing() ?? (supports("preparedStatements") ? undefined : "no protocol prepared statements");

/** Unnamed Parse/Bind/Execute of pg_backend_pid(): replies 1 2 D C. */
const pidProbe = [msg.parse("", "SELECT pg_backend_pid()"), msg.bind(""), msg.execute()];

/** The backend pid from the last DataRow of a reply list (the probe comes last). */
const probedPid = (replies: readonly Reply[]): number =>
  Number(dataRow(replies.filter((r) => r.type === "D").at(-1)!)[0]);

const rows = (replies: readonly Reply[]) => replies.filter((r) => r.type === "D").map(dataRow);

const sqlstate = (replies: readonly Reply[]) => {
  const e = replies.find((r) => r.type === "E");
  return e === undefined ? undefined : /\0C([^\0]*)/.exec(e.msg.toString("utf8", 5))?.[1];
};

describe.skipIf(skip !== undefined)(`prepared statements in transaction mode (${skip ?? "running"})`, () => {
  let fixture: Fixture;
  let target: PooledTarget;
  let role: string;
  let servers: number[];
  const open: PgSession[] = [];

  const session = async () => {
    const s = await target.session(role);
    open.push(s);
    return s;
  };
  /** The other server connection of the pool of two. */
  const other = (pid: number) => servers.find((p) => p !== pid)!;

  beforeAll(async () => {
    fixture = await createFixture("ps");
    role = fixture.roles[0];
    target = await startTarget(fixture, {
      pool: { mode: "transaction", size: SIZE, preparedStatements: { enabled: true, perServerCapacity: 2 } },
    });
  });

  // A server connection may have been replaced by an earlier test's failure: look again each time.
  beforeEach(async () => {
    servers = await warmPool(target, role, SIZE);
    expect(new Set(servers).size).toBe(SIZE);
  });

  afterAll(async () => {
    for (const s of open) s.vanish();
    await target?.stop();
  });

  it("a statement parsed on one server connection is bound on another", async () => {
    const a = await session();
    const first = await a.exchange([
      msg.parse("s1", "SELECT $1::int + 1 AS n"),
      msg.bind("s1", ["41"]),
      msg.execute(),
      ...pidProbe,
      msg.sync(),
    ]);
    expect(typesOf(first)).toBe("1 2 D C 1 2 D C Z");
    expect(rows(first)[0]).toEqual(["42"]);
    const p1 = probedPid(first);
    const release = await steerTo(target, role, other(p1), SIZE);
    try {
      const second = await a.exchange([msg.bind("s1", ["1"]), msg.execute(), ...pidProbe, msg.sync()]);
      // No ParseComplete of the re-prepare reaches the client.
      expect(typesOf(second)).toBe("2 D C 1 2 D C Z");
      expect(rows(second)[0]).toEqual(["2"]);
      expect(probedPid(second)).toBe(other(p1));
    } finally {
      await release();
    }
  });

  it("evicts inside one pipeline (capacity 2) and still answers every Bind", async () => {
    const a = await session();
    const texts = ["SELECT 'one'::text", "SELECT 'two'::text", "SELECT 'three'::text"];
    const replies = await a.exchange([
      ...texts.flatMap((t, i) => [msg.parse(`e${i}`, t), msg.bind(`e${i}`), msg.execute()]),
      // e0 was evicted on this server by e2's admission; binding it again needs a re-prepare.
      msg.bind("e0"),
      msg.execute(),
      msg.bind("e1"),
      msg.execute(),
      msg.parse("", "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql"),
      msg.bind(""),
      msg.execute(),
      msg.sync(),
    ]);
    expect(typesOf(replies)).toBe("1 2 D C 1 2 D C 1 2 D C 2 D C 2 D C 1 2 D C Z");
    expect(rows(replies).map((r) => r[0])).toEqual(["one", "two", "three", "one", "two", expect.any(String)]);
    // The server never holds more than the configured capacity.
    expect(Number(rows(replies).at(-1)![0])).toBeLessThanOrEqual(2);
  });

  it("carries Parse and Bind messages several times larger than one socket read (> 64 KiB)", async () => {
    const a = await session();
    const pad = "x".repeat(300_000);
    const param = "y".repeat(500_000);
    const text = `SELECT length($1::text) AS p, length('${pad}') AS q, md5($1::text) AS h`;
    const first = await a.exchange([
      msg.parse("big", text),
      msg.bind("big", [param]),
      msg.execute(),
      ...pidProbe,
      msg.sync(),
    ]);
    expect(typesOf(first)).toBe("1 2 D C 1 2 D C Z");
    const [p, q, h] = rows(first)[0]!;
    expect([p, q]).toEqual(["500000", "300000"]);
    const release = await steerTo(target, role, other(probedPid(first)), SIZE);
    try {
      // The 300 KB Parse is replayed on the other server before this Bind.
      const second = await a.exchange([msg.bind("big", [param]), msg.execute(), ...pidProbe, msg.sync()]);
      expect(typesOf(second)).toBe("2 D C 1 2 D C Z");
      expect(rows(second)[0]).toEqual(["500000", "300000", h]);
      expect(probedPid(second)).toBe(other(probedPid(first)));
    } finally {
      await release();
    }
  });

  it("a failed Parse leaves no name behind and the same name can be parsed again", async () => {
    const a = await session();
    const bad = await a.exchange([msg.parse("retry", "SELEC 1"), msg.sync()]);
    expect(typesOf(bad)).toBe("E Z");
    expect(sqlstate(bad)).toBe("42601");
    // The name does not exist anywhere: Bind fails as on PostgreSQL (26000), on whichever server.
    const unknown = await a.exchange([msg.bind("retry"), msg.execute(), msg.sync()]);
    expect(typesOf(unknown)).toBe("E Z");
    expect(sqlstate(unknown)).toBe("26000");
    const good = await a.exchange([msg.parse("retry", "SELECT 7"), msg.sync()]);
    expect(typesOf(good)).toBe("1 Z");
    const ran = await a.exchange([msg.bind("retry"), msg.execute(), msg.sync()]);
    expect(typesOf(ran)).toBe("2 D C Z");
    expect(rows(ran)).toEqual([["7"]]);
  });

  it("a failed Parse inside a pipeline is retried after Sync with the same name", async () => {
    const a = await session();
    const bad = await a.exchange(
      [
        msg.parse("piped", "SELECT 1/0 FROM no_such_table"),
        msg.bind("piped"),
        msg.execute(),
        msg.sync(),
        msg.parse("piped", "SELECT 'retried'::text"),
        msg.bind("piped"),
        msg.execute(),
        msg.sync(),
      ],
      2,
    );
    expect(typesOf(bad)).toBe("E Z 1 2 D C Z");
    expect(sqlstate(bad)).toBe("42P01");
    expect(rows(bad)).toEqual([["retried"]]);
  });

  it("a standalone Describe after a server switch describes the statement", async () => {
    const a = await session();
    const first = await a.exchange([
      msg.parse("desc", "SELECT $1::int AS a, 'x'::text AS b"),
      ...pidProbe,
      msg.sync(),
    ]);
    expect(typesOf(first)).toBe("1 1 2 D C Z");
    const release = await steerTo(target, role, other(probedPid(first)), SIZE);
    try {
      const d = await a.exchange([msg.describeStatement("desc"), ...pidProbe, msg.sync()]);
      expect(typesOf(d)).toBe("t T 1 2 D C Z");
      const paramDesc = d.find((r) => r.type === "t")!.msg;
      expect(paramDesc.readInt16BE(5)).toBe(1);
      expect(paramDesc.readInt32BE(7)).toBe(23); // int4
      const rowDesc = d.find((r) => r.type === "T")!.msg;
      expect(rowDesc.readInt16BE(5)).toBe(2);
      expect(rowDesc.includes(Buffer.from("a\0"))).toBe(true);
      expect(probedPid(d)).toBe(other(probedPid(first)));
    } finally {
      await release();
    }
  });

  it("two clients may use the same name for different statements", async () => {
    const [a, b] = [await session(), await session()];
    await a.exchange([msg.parse("same", "SELECT 'from a'::text"), msg.sync()]);
    await b.exchange([msg.parse("same", "SELECT 'from b'::text"), msg.sync()]);
    const ra = await a.exchange([msg.bind("same"), msg.execute(), msg.sync()]);
    const rb = await b.exchange([msg.bind("same"), msg.execute(), msg.sync()]);
    expect(rows(ra)).toEqual([["from a"]]);
    expect(rows(rb)).toEqual([["from b"]]);
  });

  it("Close then Parse of the same name with other text gives the new statement", async () => {
    const a = await session();
    await a.exchange([msg.parse("reuse", "SELECT 'old'::text"), msg.sync()]);
    expect(typesOf(await a.exchange([msg.closeStatement("reuse"), msg.sync()]))).toBe("3 Z");
    expect(typesOf(await a.exchange([msg.parse("reuse", "SELECT 'new'::text"), msg.sync()]))).toBe("1 Z");
    expect(rows(await a.exchange([msg.bind("reuse"), msg.execute(), msg.sync()]))).toEqual([["new"]]);
  });

  it("Parse of a name the client already has is 42P05, as on PostgreSQL", async () => {
    const a = await session();
    await a.exchange([msg.parse("twice", "SELECT 1"), msg.sync()]);
    const again = await a.exchange([msg.parse("twice", "SELECT 2"), msg.sync()]);
    expect(typesOf(again)).toBe("E Z");
    expect(sqlstate(again)).toBe("42P05");
  });

  for (const command of ["DEALLOCATE ALL", "DISCARD ALL"]) {
    it(`${command} clears only the sending client's statements`, async () => {
      const [a, b] = [await session(), await session()];
      const text = "SELECT 'shared text'::text";
      await a.exchange([msg.parse("d1", text), msg.sync()]);
      await b.exchange([msg.parse("d1", text), msg.sync()]);
      const done = await a.query(command);
      expect(done.error).toBeUndefined();
      const gone = await a.exchange([msg.bind("d1"), msg.execute(), msg.sync()]);
      expect(typesOf(gone)).toBe("E Z");
      expect(sqlstate(gone)).toBe("26000");
      // B's statement survives, even where the server's copy was dropped with everything else.
      for (let i = 0; i < 3; i++) {
        const kept = await b.exchange([msg.bind("d1"), msg.execute(), msg.sync()]);
        expect(typesOf(kept)).toBe("2 D C Z");
        expect(rows(kept)).toEqual([["shared text"]]);
      }
      // And A may prepare the name again.
      expect(typesOf(await a.exchange([msg.parse("d1", text), msg.sync()]))).toBe("1 Z");
    });
  }

  it("many clients share few server connections and each always gets its own statements", async () => {
    const clients = await Promise.all(Array.from({ length: 8 }, () => session()));
    for (const [i, c] of clients.entries())
      await c.exchange([msg.parse("own", `SELECT ${i}::int AS i, $1::text AS t`), msg.sync()]);
    for (let round = 0; round < 5; round++) {
      const results = await Promise.all(
        clients.map((c, i) => c.exchange([msg.bind("own", [`r${round}c${i}`]), msg.execute(), msg.sync()])),
      );
      results.forEach((r, i) => {
        expect(typesOf(r)).toBe("2 D C Z");
        expect(rows(r)).toEqual([[String(i), `r${round}c${i}`]]);
      });
    }
  });
});
