import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startProxy, type TestProxy } from "./support/proxy.ts";

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy();
});
afterAll(async () => {
  await proxy.close();
});

const client = async () => {
  const c = new pg.Client(proxy.connection());
  await c.connect();
  return c;
};

describe("session mode through pgwarden with node-postgres", () => {
  it("runs a simple query and a multi-statement string", async () => {
    const c = await client();
    const r = await c.query("SELECT 1 AS one, 'x'::text AS t");
    expect(r.rows).toEqual([{ one: 1, t: "x" }]);
    const multi = (await c.query(
      "SELECT 1 AS a; SELECT 2 AS b; SELECT 3 AS c",
    )) as unknown as pg.QueryResult[];
    expect(multi.map((m) => m.rows[0])).toEqual([{ a: 1 }, { b: 2 }, { c: 3 }]);
    await c.end();
  });
});
