import { describe, expect, it } from "vitest";
import { dataRow, msg, type Reply, typesOf } from "../support/pgSession.ts";
import { pooledClients } from "../support/pooledClients.ts";

/**
 * Transaction mode, one server connection: the unnamed prepared statement outlives Sync in
 * PostgreSQL (only the next unnamed Parse or a simple Query replaces it), so what one client left
 * as the unnamed statement is still on the server connection when the next client gets it.
 */

const sqlstate = (replies: readonly Reply[]): string | undefined => {
  const e = replies.find((r) => r.type === "E");
  return e === undefined ? undefined : /\0C([^\0]*)/.exec(e.msg.toString("utf8", 5))?.[1];
};

describe("the unnamed prepared statement in transaction mode", () => {
  const session = pooledClients("hunnamed", { pool: { mode: "transaction", size: 1 } }, "perBlock");

  it("a Bind of the unnamed statement never runs the statement another client parsed", async () => {
    const alice = await session();
    const mallory = await session();
    const parsed = await alice.exchange([msg.parse("", "SELECT 'alice-only'::text AS secret"), msg.sync()]);
    expect(typesOf(parsed)).toBe("1 Z");
    // Mallory never parsed anything: on a connection of its own PostgreSQL answers 26000.
    const stolen = await mallory.exchange([
      msg.describeStatement(""),
      msg.bind(""),
      msg.execute(),
      msg.sync(),
    ]);
    const rows = stolen.filter((r) => r.type === "D").map(dataRow);
    expect(rows, `mallory got ${typesOf(stolen)}`).toEqual([]);
    expect(sqlstate(stolen)).toBe("26000");
  });

  it("a client's own unnamed statement survives its Sync, as on a dedicated connection", async () => {
    const alice = await session();
    const bob = await session();
    expect(typesOf(await alice.exchange([msg.parse("", "SELECT 'mine'::text"), msg.sync()]))).toBe("1 Z");
    // Another client's simple query on the only server connection drops the unnamed statement.
    expect((await bob.query("SELECT 1")).error).toBeUndefined();
    const r = await alice.exchange([msg.bind(""), msg.execute(), msg.sync()]);
    // PostgreSQL (or a proxy that keeps the client's unnamed statement) answers 2 D C Z with 'mine'.
    expect(sqlstate(r), `alice got ${typesOf(r)}`).toBeUndefined();
    expect(r.filter((m) => m.type === "D").map(dataRow)).toEqual([["mine"]]);
  });
});
