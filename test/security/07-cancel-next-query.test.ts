import { connect } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import { boundary, int32, isCancel, sleep, type Tap, tcpTap } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/**
 * Finding 7: pgwarden closed the client's cancel connection at once and forwarded the cancel
 * afterwards, so a client that (like libpq) waits for that close before its next statement had
 * the next statement canceled: 46 of 50 through pgwarden, 0 of 50 directly.
 */

let proxy: TestProxy;
let tap: Tap;
beforeAll(async () => {
  // PostgreSQL's close of a cancel connection reaches pgwarden 300 ms late: waiting for it shows.
  tap = await tcpTap({ holdCloseMs: 300 });
  proxy = await startProxy({
    ...boundary(),
    upstream: { ...boundary().upstream, host: "127.0.0.1", port: tap.port },
    auth: { method: "trust" },
    log: { level: "warn" },
  });
});
afterAll(async () => {
  await proxy?.close();
  await tap?.close();
});

type Keyed = pg.Client & { processID: number; secretKey: number };

const session = async (): Promise<Keyed> => {
  const c = new pg.Client({
    host: "127.0.0.1",
    port: proxy.port,
    user: "alice",
    database: postgresInfo().appDatabase,
  }) as Keyed;
  c.on("error", () => {});
  await c.connect();
  return c;
};

/** What libpq's PQcancel does: send the CancelRequest, then wait until the server closes. Resolves with the close time. */
const cancelLikeLibpq = (c: Keyed): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port: proxy.port }, () =>
      s.write(encodeCancelRequest(c.processID, int32(c.secretKey))),
    );
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error("the cancel connection was not closed within 5 s"));
    }, 5000);
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(timer);
      resolve(Date.now());
    });
  });

const sqlstate = (p: Promise<unknown>): Promise<string | undefined> =>
  p.then(
    () => undefined,
    (e: { code?: string }) => e.code ?? "no code",
  );

describe("cancel requests", () => {
  it("a cancel sent while idle never cancels the next statement (50 tries)", async () => {
    const c = await session();
    try {
      let canceled = 0;
      for (let i = 0; i < 50; i++) {
        await cancelLikeLibpq(c);
        if ((await sqlstate(c.query("SELECT pg_sleep(0.05)"))) === "57014") canceled++;
      }
      expect(canceled).toBe(0);
    } finally {
      await c.end();
    }
  });

  it("closes the client's cancel connection only after PostgreSQL closed the upstream one", async () => {
    const c = await session();
    try {
      const running = sqlstate(c.query("SELECT pg_sleep(5)"));
      await sleep(200);
      const before = tap.connections.length;
      const started = Date.now();
      const clientClosedAt = await cancelLikeLibpq(c);
      expect(await running).toBe("57014");
      expect(Date.now() - started).toBeLessThan(3000);
      const upstream = tap.connections.slice(before).filter(isCancel);
      expect(upstream.length).toBe(1);
      const forwarded = upstream[0]!.forwardedCloseAt;
      expect(forwarded, "PostgreSQL's close had not reached pgwarden").toBeDefined();
      expect(clientClosedAt).toBeGreaterThanOrEqual(forwarded!);
    } finally {
      await c.end();
    }
  });
});
