import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { isPgwardenError } from "../../src/errors.ts";
import { PreparedStatements } from "../../src/pool/PreparedStatements.ts";
import { decodeClose, decodeParse, encodeParse } from "../../src/protocol/frontend.ts";
import { Frontend } from "../../src/protocol/messageTypes.ts";

interface Stmt {
  readonly query: string;
  readonly types: readonly number[];
}

const isError = (a: object): a is { sqlstate: string; message: string } => "sqlstate" in a;

/** A simulated PostgreSQL per server connection: what each really has prepared. */
class Model {
  readonly servers = new Map<number, Map<string, Stmt>>();
  readonly clients = new Map<number, Map<string, Stmt>>();
  closes = 0;

  server(s: number): Map<string, Stmt> {
    if (!this.servers.has(s)) this.servers.set(s, new Map());
    return this.servers.get(s)!;
  }
  client(c: number): Map<string, Stmt> {
    if (!this.clients.has(c)) this.clients.set(c, new Map());
    return this.clients.get(c)!;
  }

  /** What the server does with a message the relay sends it; the invariants live here. */
  send(s: number, msg: Buffer): void {
    const srv = this.server(s);
    if (msg[0] === Frontend.Close) {
      const d = decodeClose(msg);
      if (isPgwardenError(d)) throw new Error(d.message);
      expect(srv.has(d.name), `Close for ${d.name}, which server ${s} lacks`).toBe(true);
      srv.delete(d.name);
      this.closes++;
    } else if (msg[0] === Frontend.Parse) {
      const d = decodeParse(msg);
      if (isPgwardenError(d)) throw new Error(d.message);
      expect(srv.has(d.name), `Parse of ${d.name}, which server ${s} already has`).toBe(false);
      srv.set(d.name, { query: d.query, types: d.paramTypes });
    } else throw new Error(`unexpected injected message ${msg[0]}`);
  }
}

const CLIENTS = 4;
const SERVERS = 3;
const CAPACITY = 2;
const client = fc.integer({ min: 0, max: CLIENTS - 1 });
const server = fc.integer({ min: 0, max: SERVERS - 1 });
const name = fc.constantFrom("a", "b", "c");
const stmt = fc.record({
  query: fc.constantFrom("select 1", "select $1::int", "select 2", "select 3"),
  types: fc.constantFrom([] as number[], [23]),
});

type Op =
  | { op: "parse"; c: number; name: string; stmt: Stmt; s: number; fails: boolean }
  | { op: "bind" | "describe"; c: number; name: string; s: number }
  | { op: "close" | "deallocateAll"; c: number; name: string }
  | { op: "serverClosed" | "serverDiscardAll"; s: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("parse" as const),
      c: client,
      name,
      stmt,
      s: server,
      fails: fc.boolean(),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      op: fc.constantFrom("bind" as const, "describe" as const),
      c: client,
      name,
      s: server,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constantFrom("close" as const, "deallocateAll" as const),
      c: client,
      name,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constantFrom("serverClosed" as const, "serverDiscardAll" as const),
      s: server,
    }),
  },
);

const step = (ps: PreparedStatements, m: Model, o: Op): void => {
  switch (o.op) {
    case "parse": {
      const a = ps.onParse(o.c, o.name, o.stmt.query, o.stmt.types, o.s);
      if (m.client(o.c).has(o.name)) {
        expect(isError(a) && a.sqlstate).toBe("42P05");
        return;
      }
      if (isError(a)) throw new Error(a.message);
      for (const close of a.evict) m.send(o.s, close);
      if (!a.needsParse) {
        expect(m.server(o.s).get(a.serverName)).toEqual(o.stmt);
        m.client(o.c).set(o.name, o.stmt);
      } else if (o.fails) {
        ps.onParseFailed(o.c, o.name, o.s);
      } else {
        m.send(o.s, rebuildParse(a.serverName, o.stmt));
        m.client(o.c).set(o.name, o.stmt);
      }
      return;
    }
    case "bind":
    case "describe": {
      const a = o.op === "bind" ? ps.onBind(o.c, o.name, o.s) : ps.onDescribe(o.c, o.name, o.s);
      const want = m.client(o.c).get(o.name);
      if (want === undefined) {
        expect(isError(a) && a.sqlstate).toBe("26000");
        return;
      }
      if (isError(a)) throw new Error(a.message);
      for (const msg of a.inject) m.send(o.s, msg);
      // The Bind goes out now: the server must hold exactly the client's statement under that name.
      expect(m.server(o.s).get(a.serverName)).toEqual(want);
      return;
    }
    case "close":
      expect(ps.onClose(o.c, o.name)).not.toBe(false);
      m.client(o.c).delete(o.name);
      return;
    case "deallocateAll":
      ps.deallocateAll(o.c);
      m.client(o.c).clear();
      return;
    case "serverClosed":
    case "serverDiscardAll":
      if (o.op === "serverClosed") ps.onServerClosed(o.s);
      else ps.onServerCleared(o.s);
      m.server(o.s).clear();
      return;
  }
};

// The relay forwards the client's own Parse with the name rewritten; the model only needs its content.
const rebuildParse = (serverName: string, s: Stmt): Buffer =>
  encodeParse({ name: serverName, query: s.query, paramTypes: s.types });

describe("PreparedStatements", () => {
  test.prop([fc.array(op, { minLength: 1, maxLength: 200 })], { numRuns: 300 })(
    "never binds a name the server lacks, closes what it evicts, and stays bounded",
    (ops) => {
      const ps = new PreparedStatements(CAPACITY);
      const m = new Model();
      for (const o of ops) {
        step(ps, m, o);
        let names = 0;
        for (const c of m.clients.values()) names += c.size;
        let held = 0;
        for (let s = 0; s < SERVERS; s++) {
          const real = [...m.server(s).keys()].sort();
          // pgwarden's idea of each server is the server's truth, and within capacity.
          expect([...ps.preparedOn(s)].sort()).toEqual(real);
          expect(real.length).toBeLessThanOrEqual(CAPACITY);
          held += real.length;
        }
        expect(ps.size.statements).toBeLessThanOrEqual(names + held);
      }
    },
  );

  it("moves a statement between servers by re-preparing it before the Bind", () => {
    const ps = new PreparedStatements(10);
    const p = ps.onParse("c1", "s1", "select $1::int", [23], "A");
    expect(p).toMatchObject({ serverName: "PGW_1", needsParse: true, evict: [] });
    const b = ps.onBind("c1", "s1", "B");
    if (isError(b)) throw new Error(b.message);
    expect(b.serverName).toBe("PGW_1");
    expect(b.inject.map((x) => decodeParse(x))).toEqual([
      { name: "PGW_1", query: "select $1::int", paramTypes: [23] },
    ]);
    // A second client with the same text and types shares the server statement: no Parse at all.
    expect(ps.onParse("c2", "other", "select $1::int", [23], "B")).toMatchObject({
      serverName: "PGW_1",
      needsParse: false,
    });
    // Different parameter types are a different statement.
    expect(ps.onParse("c2", "typed", "select $1::int", [20], "B")).toMatchObject({
      serverName: "PGW_2",
      needsParse: true,
    });
  });

  it("unregisters a failed Parse so the name can be parsed again", () => {
    const ps = new PreparedStatements(10);
    ps.onParse("c", "s", "select * from missing", [], "A");
    ps.onParseFailed("c", "s", "A");
    expect(ps.onBind("c", "s", "A")).toEqual({
      sqlstate: "26000",
      message: 'prepared statement "s" does not exist',
    });
    expect(ps.onParse("c", "s", "select 1", [], "A")).toMatchObject({ needsParse: true });
    expect(ps.size.statements).toBe(1);
  });

  it("evicts the least recently used statement with a Close", () => {
    const ps = new PreparedStatements(2);
    ps.onParse("c", "a", "select 1", [], "A");
    ps.onParse("c", "b", "select 2", [], "A");
    ps.onBind("c", "a", "A");
    const p = ps.onParse("c", "x", "select 3", [], "A");
    if (isError(p)) throw new Error(p.message);
    expect(p.evict.map((x) => decodeClose(x))).toEqual([{ target: "S", name: "PGW_2" }]);
    expect(ps.preparedOn("A")).toEqual(["PGW_1", "PGW_3"]);
  });

  it("passes the unnamed statement through and answers Close locally", () => {
    const ps = new PreparedStatements(1);
    expect(ps.onParse("c", "", "select 1", [], "A")).toEqual({ serverName: "", needsParse: true, evict: [] });
    expect(ps.onBind("c", "", "B")).toEqual({ serverName: "", inject: [] });
    expect(ps.onClose("c", "")).toBe(false);
    expect(ps.onClose("c", "never-parsed")).not.toBe(false);
  });

  it("DEALLOCATE ALL clears only that client's names", () => {
    const ps = new PreparedStatements(5);
    ps.onParse("c1", "s", "select 1", [], "A");
    ps.onParse("c2", "s", "select 1", [], "A");
    ps.deallocateAll("c1");
    expect(isError(ps.onBind("c1", "s", "A"))).toBe(true);
    expect(ps.onBind("c2", "s", "A")).toEqual({ serverName: "PGW_1", inject: [] });
  });

  it("forgets a server's statements when it is cleared, and re-prepares there", () => {
    const ps = new PreparedStatements(5);
    ps.onParse("c", "s", "select 1", [], "A");
    ps.onServerCleared("A");
    const b = ps.onBind("c", "s", "A");
    expect(!isError(b) && b.inject.length).toBe(1);
  });
});
