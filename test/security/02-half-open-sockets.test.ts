import { connect } from "node:net";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import { boundary, eventually, HalfOpenPeer, int32, sleep } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/**
 * Finding 2: endings only half-closed the socket, so 1,000 peers that sent 8 bad bytes and kept
 * their write side open held every slot; and the client cap was checked before the first packet,
 * so a CancelRequest was refused when the proxy was full.
 */

let proxy: TestProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

const connection = (p: TestProxy) => ({
  host: "127.0.0.1",
  port: p.port,
  user: "alice",
  database: postgresInfo().appDatabase,
});

/** Protocol version 0.0: a complete, invalid 8-byte first packet. */
const BAD_FIRST_PACKET = Buffer.concat([int32(8), int32(0)]);

describe("half-open sockets", () => {
  it("destroys 1,000 half-open sockets that sent 8 bad bytes, and a normal client gets in meanwhile", async () => {
    proxy = await startProxy({
      ...boundary(),
      auth: { method: "trust", timeoutMs: 10_000 },
      limits: { maxClientConnections: 1000 },
      log: { level: "silent" },
    });
    const peers: HalfOpenPeer[] = [];
    try {
      for (let batch = 0; batch < 10; batch++) {
        const opened = await Promise.all(Array.from({ length: 100 }, () => HalfOpenPeer.open(proxy!.port)));
        for (const p of opened) p.write(BAD_FIRST_PACKET);
        peers.push(...opened);
      }
      // A normal client, while every bad peer still holds its write side open.
      const started = Date.now();
      let connected = false;
      let lastError: unknown;
      while (!connected && Date.now() - started < 5000) {
        const c = new pg.Client(connection(proxy));
        c.on("error", () => {});
        try {
          await c.connect();
          expect((await c.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
          await c.end();
          connected = true;
        } catch (e) {
          lastError = e;
          await c.end().catch(() => {});
          await sleep(200);
        }
      }
      expect(connected, `normal client kept out: ${String(lastError)}`).toBe(true);
      expect(await eventually(() => proxy!.server.sessions.size === 0, 5000)).toBe(true);
      const gone = await Promise.all(peers.map((p) => p.destroyedByServer(5000)));
      expect(gone.filter((g) => !g).length).toBe(0);
    } finally {
      for (const p of peers) p.destroy();
    }
  });

  it("serves a CancelRequest while the client cap is full of authenticated clients", async () => {
    proxy = await startProxy({
      ...boundary(),
      auth: { method: "trust" },
      limits: { maxClientConnections: 3, maxCancelConnections: 16 },
    });
    const clients = Array.from({ length: 3 }, () => {
      const c = new pg.Client(connection(proxy!));
      c.on("error", () => {});
      return c;
    });
    try {
      for (const c of clients) await c.connect();
      const target = clients[0]! as pg.Client & { processID: number; secretKey: number };
      const running = target.query("SELECT pg_sleep(10)").then(
        () => "finished",
        (e: { code?: string }) => e.code,
      );
      await sleep(200);
      const cancel = connect({ host: "127.0.0.1", port: proxy.port });
      cancel.on("error", () => {});
      cancel.on("connect", () =>
        cancel.write(encodeCancelRequest(target.processID, int32(target.secretKey))),
      );
      const outcome = await Promise.race([running, sleep(4000).then(() => "still running")]);
      cancel.destroy();
      expect(outcome).toBe("57014");
    } finally {
      for (const c of clients) await c.end().catch(() => {});
    }
  });
});
