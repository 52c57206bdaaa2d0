import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import {
  authMessages,
  boundary,
  flood,
  frame,
  header,
  type ServeChild,
  serveChild,
  sleep,
  verifier,
  writeServeFiles,
} from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 3: after a startup packet pgwarden queued everything a client sent (400 MB took RSS
 * from 136 to 528 MB) though it had already answered 08P01, and kept the socket open; before
 * authentication it accepted messages up to 256 MiB.
 */

const MiB = 1024 * 1024;

const startupFor = (user: string) =>
  encodeStartup(
    new Map([
      ["user", user],
      ["database", postgresInfo().appDatabase],
    ]),
  );

/** 16 Query messages of 64 KiB: 1 MiB per write. */
const queries = (): Buffer => {
  const one = frame(0x51, Buffer.concat([Buffer.alloc(65_531, 0x20), Buffer.from([0])]));
  return Buffer.concat(Array.from({ length: 16 }, () => one));
};

describe("buffering before authentication (pgwarden serve as a process)", () => {
  let serve: ServeChild | undefined;
  beforeAll(async () => {
    const pg = postgresInfo();
    const port = await freePort();
    const files = await writeServeFiles(
      {
        ...boundary(),
        listen: { host: "127.0.0.1", port },
        upstream: { host: pg.host, port: pg.port, user: pg.appRole, password: pg.rolePassword },
        auth: { method: "scram-sha-256", timeoutMs: 10_000, allowPasswordOverPlaintext: true },
        limits: { maxBufferedBytesPerConnection: MiB },
        log: { level: "warn" },
      },
      [["alice", verifier("alice-password")]],
    );
    serve = await serveChild(files.config, port);
  });
  afterAll(() => serve?.kill());

  it("keeps RSS growth under 64 MB while a client that never reads floods 400 MB before authenticating, and closes it", async () => {
    const s = serve!;
    const c = await WireClient.open(s.port);
    try {
      c.send(startupFor("alice"));
      await c.until((x) => authMessages(x, 10).length > 0, 5000, "AuthenticationSASL");
      c.socket.pause();
      await sleep(200);
      const baseline = s.rss();
      let peak = baseline;
      const sampler = setInterval(() => {
        peak = Math.max(peak, s.rss());
      }, 25);
      const started = Date.now();
      const result = await flood(c.socket, queries(), 400 * MiB, 1000);
      // A reset shows only to a writer: keep poking until the connection is gone.
      while (!c.closed && Date.now() - started < 8000) {
        if (!c.socket.destroyed) c.socket.write(Buffer.from([0]));
        await sleep(100);
      }
      clearInterval(sampler);
      peak = Math.max(peak, s.rss());
      expect((peak - baseline) / MiB, `RSS grew by ${((peak - baseline) / MiB).toFixed(0)} MiB`).toBeLessThan(
        64,
      );
      expect(result.written, "the proxy kept reading after the violation").toBeLessThan(400 * MiB);
      expect(c.closed, "the proxy never closed the flooding connection").toBe(true);
      expect(Date.now() - started).toBeLessThan(8000);
    } finally {
      c.close();
    }
  });
});

describe("auth-phase message limit", () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy(
      { ...boundary(), auth: { method: "scram-sha-256", timeoutMs: 10_000 } },
      new Map([["alice", verifier("alice-password")]]),
    );
  });
  afterAll(() => proxy.close());

  const cases: [string, Buffer][] = [
    [
      "a SASLInitialResponse header declaring 70,000 bytes",
      Buffer.concat([header(0x70, 70_000), Buffer.alloc(100)]),
    ],
    ["a Query header declaring 70,000 bytes", Buffer.concat([header(0x51, 70_000), Buffer.alloc(100)])],
    ["a Query header declaring 1 GB", header(0x51, 1_000_000_000)],
  ];
  for (const [what, bytes] of cases) {
    it(`answers ${what} with 08P01 on sight and closes`, async () => {
      const c = await WireClient.open(proxy.port);
      try {
        c.send(startupFor("alice"));
        await c.until((x) => authMessages(x, 10).length > 0, 5000, "AuthenticationSASL");
        const offset = c.received.length;
        const t0 = Date.now();
        c.send(bytes);
        await c.waitClosed(2000);
        expect(Date.now() - t0).toBeLessThan(2000);
        expect(c.errorCode(offset)).toBe("08P01");
        expect(authMessages(c, 11, offset)).toEqual([]);
      } finally {
        c.close();
      }
    });
  }
});
