import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startProxy, type TestProxy } from "../support/proxy.ts";

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy({ pool: { mode: "transaction", size: 2 } });
});
afterAll(async () => proxy?.close());

it("smoke: pg through transaction mode", async () => {
  const clients = await Promise.all(
    Array.from({ length: 10 }, async () => {
      const c = new pg.Client(proxy.connection());
      await c.connect();
      return c;
    }),
  );
  await Promise.all(
    clients.map(async (c, i) => {
      for (let k = 0; k < 20; k++) {
        const r = await c.query("SELECT $1::int + 1 AS n", [i]);
        expect(r.rows[0].n).toBe(i + 1);
        await c
          .query({ name: "st", text: "SELECT $1::text AS t", values: [`x${i}`] })
          .then((r) => expect(r.rows[0].t).toBe(`x${i}`));
      }
      await c.query(`SET application_name = 'c${i}'`);
      const r = await c.query("SHOW application_name");
      expect(r.rows[0].application_name).toBe(`c${i}`);
    }),
  );
  const pids = new Set<number>();
  for (const c of clients) pids.add((await c.query("SELECT pg_backend_pid() AS p")).rows[0].p);
  expect(pids.size).toBeLessThanOrEqual(2);
  await Promise.all(clients.map((c) => c.end()));
});
