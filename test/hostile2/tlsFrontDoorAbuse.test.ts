import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { Duplex } from "node:stream";
import * as tls from "node:tls";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeGSSENCRequest, encodeSSLRequest, encodeStartup } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { eventually, scramExchange, sleep } from "../support/hostile.ts";
import { startProxy, TEST_PASSWORD, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * The client TLS front door under clients that break the negotiation: garbage after `S`, a second
 * SSLRequest where the ClientHello belongs, an SSLRequest inside TLS, a close before `S` is read,
 * a half-close after the SSLRequest, a full ClientHello and then silence (the server's flight sent,
 * the client's Finished never coming), direct TLS without ALPN or with a wrong one, GSSENCRequest
 * before SSLRequest, and the client cap filled with expired/untrusted client certificates or with
 * stalled handshakes. Each must end within auth.timeoutMs (plus the linger), never reach
 * authentication, and leave the cap able to admit the next good client. PostgreSQL closes
 * non-TLS bytes after `S` at OpenSSL's first record error, closes a stalled handshake at
 * authentication_timeout, refuses direct TLS without ALPN `postgresql` (17+), and allows
 * GSSENCRequest → N → SSLRequest → S.
 */

const TIMEOUT = 1000;
const CAP = 8;
const CANCEL_CAP = 2;
/** Sockets still before their startup packet (a TLS handshake included) are bounded by both caps. */
const PEERS = CAP + CANCEL_CAP;
const certs = testCerts();
const ca = readFileSync(certs.ca.cert);

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy({
    tls: { mode: "require", cert: certs.server.cert, key: certs.server.key, clientCa: certs.ca.cert },
    auth: { method: "scram-sha-256", timeoutMs: TIMEOUT },
    limits: { maxClientConnections: CAP, maxCancelConnections: CANCEL_CAP, lingerMs: 200 },
    log: { level: "warn" },
  });
});
afterAll(() => proxy?.close());

const startup = () =>
  encodeStartup(
    new Map([
      ["user", "postgres"],
      ["database", "postgres"],
    ]),
  );

/** A good client over SSLRequest: logs in and runs a query. */
const honest = async (): Promise<{ ok: boolean; code?: string }> => {
  const c = new pg.Client({ ...proxy.connection(), ssl: { ca, servername: "localhost" } });
  c.on("error", () => {});
  try {
    await c.connect();
    await c.query("SELECT 1");
    return { ok: true };
  } catch (e) {
    return { ok: false, code: (e as { code?: string }).code ?? (e as Error).message };
  } finally {
    await c.end().catch(() => {});
  }
};

/** A raw socket that has sent SSLRequest and read `S` (nothing more). */
const afterS = async (): Promise<Socket> => {
  const s = connect({ host: "127.0.0.1", port: proxy.port });
  s.on("error", () => {});
  await new Promise<void>((r) => s.once("connect", () => r()));
  s.write(encodeSSLRequest());
  const first = await new Promise<Buffer>((r) => s.once("data", r));
  expect(first.toString("latin1")).toBe("S");
  return s;
};

/** Resolves with what arrived and when the socket closed (or `ms` passed: closedAfter undefined). */
const watchClose = (s: Socket | tls.TLSSocket, ms: number): Promise<{ data: Buffer; closedAfter?: number }> =>
  new Promise((resolve) => {
    const t0 = Date.now();
    const chunks: Buffer[] = [];
    if (s.destroyed) return resolve({ data: Buffer.alloc(0), closedAfter: 0 });
    const timer = setTimeout(() => resolve({ data: Buffer.concat(chunks) }), ms);
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("error", () => {});
    s.once("close", () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), closedAfter: Date.now() - t0 });
    });
  });

/**
 * A TLS client over SSLRequest whose transport passes on only its first `flights` writes: with 1,
 * the ClientHello reaches pgwarden, which answers with its whole flight, and then nothing more.
 */
const stalledTls = async (flights: number, options: tls.ConnectionOptions = {}) => {
  const raw = await afterS();
  let written = 0;
  const duplex = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      if (written++ < flights && !raw.destroyed) raw.write(chunk);
      cb();
    },
  });
  raw.on("data", (d: Buffer) => duplex.push(d));
  raw.on("close", () => duplex.destroy());
  const t = tls.connect({ socket: duplex, ca, servername: "localhost", ...options });
  t.on("error", () => {});
  return { raw, tls: t };
};

const sessionsDrain = () => eventually(() => proxy.server.sessions.size === 0, TIMEOUT + 2000);

describe("broken negotiations, one client at a time", () => {
  it("an HTTP request where the ClientHello belongs is closed at once", async () => {
    const s = await afterS();
    const w = watchClose(s, TIMEOUT + 1500);
    s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    const r = await w;
    expect(r.closedAfter, "still open").toBeDefined();
    expect(r.closedAfter!).toBeLessThan(TIMEOUT);
    // At most a TLS alert (0x15): never a PostgreSQL message such as an authentication request.
    if (r.data.length > 0) expect(r.data[0]).toBe(0x15);
    expect(await sessionsDrain()).toBe(true);
  });

  it("a second SSLRequest where the ClientHello belongs is closed at once, never answered `S`", async () => {
    const s = await afterS();
    const w = watchClose(s, TIMEOUT + 1500);
    s.write(encodeSSLRequest());
    const r = await w;
    expect(r.closedAfter).toBeDefined();
    expect(r.closedAfter!).toBeLessThan(TIMEOUT);
    expect(r.data.toString("latin1")).not.toBe("S");
  });

  it("an SSLRequest sent inside TLS is not answered `S` again (PostgreSQL: 08P01 unsupported protocol)", async () => {
    const raw = await afterS();
    const t = tls.connect({ socket: raw, ca, servername: "localhost" });
    t.on("error", () => {});
    await new Promise<void>((r) => t.once("secureConnect", () => r()));
    const w = watchClose(t, TIMEOUT + 1500);
    t.write(encodeSSLRequest());
    const r = await w;
    expect(r.data.toString("latin1")).not.toBe("S");
    expect(r.closedAfter, "an SSLRequest inside TLS held the connection open").toBeDefined();
  });

  it("a client that closes before reading `S`, and one that half-closes after its SSLRequest, free their slots", async () => {
    const a = connect({ host: "127.0.0.1", port: proxy.port }, () => {
      a.write(encodeSSLRequest());
      a.destroy();
    });
    a.on("error", () => {});
    const b = connect({ host: "127.0.0.1", port: proxy.port, allowHalfOpen: true }, () => {
      b.end(encodeSSLRequest());
    });
    b.on("error", () => {});
    const rb = await watchClose(b, TIMEOUT + 1500);
    expect(rb.closedAfter, "half-closed peer still held").toBeDefined();
    b.destroy();
    expect(await sessionsDrain()).toBe(true);
  });

  it("GSSENCRequest, N, then SSLRequest, S, then TLS and SCRAM: the client gets in", async () => {
    const s = connect({ host: "127.0.0.1", port: proxy.port });
    s.on("error", () => {});
    await new Promise<void>((r) => s.once("connect", () => r()));
    s.write(encodeGSSENCRequest());
    expect((await new Promise<Buffer>((r) => s.once("data", r))).toString("latin1")).toBe("N");
    s.write(encodeSSLRequest());
    expect((await new Promise<Buffer>((r) => s.once("data", r))).toString("latin1")).toBe("S");
    const t = tls.connect({ socket: s, ca, servername: "localhost" });
    t.on("error", () => {});
    await new Promise<void>((r) => t.once("secureConnect", () => r()));
    const w = new (WireClient as unknown as new (s: Socket) => WireClient)(t);
    w.send(startup());
    await scramExchange(w, TEST_PASSWORD);
    await w.until(
      (x) => x.messages().some((m) => m.type === "Z") || x.errorCode() !== undefined,
      5000,
      "ready",
    );
    expect(w.errorCode()).toBeUndefined();
    w.close();
  });
});

describe("direct TLS (first byte 0x16)", () => {
  const direct = (alpn: string[] | undefined): Promise<tls.TLSSocket | Error> =>
    new Promise((resolve) => {
      const s = tls.connect({
        host: "127.0.0.1",
        port: proxy.port,
        ca,
        servername: "localhost",
        ...(alpn === undefined ? {} : { ALPNProtocols: alpn }),
      });
      s.once("secureConnect", () => resolve(s));
      s.once("error", (e) => resolve(e));
    });

  for (const [what, alpn] of [
    ["without ALPN", undefined],
    ["with ALPN http/1.1", ["http/1.1"]],
    ["with ALPN postgres (not postgresql)", ["postgres"]],
  ] as const) {
    it(`${what}: closed before any authentication, promptly`, async () => {
      const t0 = Date.now();
      const s = await direct(alpn === undefined ? undefined : [...alpn]);
      if (!(s instanceof Error)) {
        const w = watchClose(s, TIMEOUT + 1500);
        s.write(startup());
        const r = await w;
        expect(r.closedAfter, "direct TLS without ALPN postgresql held open").toBeDefined();
        expect(r.data.length, "pgwarden answered a client without ALPN postgresql").toBe(0);
      }
      expect(Date.now() - t0).toBeLessThan(TIMEOUT);
      expect(await sessionsDrain()).toBe(true);
    });
  }

  it("control: with ALPN postgresql the client logs in", async () => {
    const s = await direct(["postgresql"]);
    expect(s).not.toBeInstanceOf(Error);
    const w = new (WireClient as unknown as new (s: Socket) => WireClient)(s as tls.TLSSocket);
    w.send(startup());
    await scramExchange(w, TEST_PASSWORD);
    await w.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ready");
    w.close();
  });
});

describe("the client cap full of bad TLS clients", () => {
  it(`${PEERS} stalled after a full ClientHello are destroyed by auth.timeoutMs; the next good client gets in`, async () => {
    const peers = await Promise.all(Array.from({ length: PEERS }, () => stalledTls(1)));
    let established = 0;
    for (const p of peers) p.tls.once("secureConnect", () => established++);
    try {
      const t0 = Date.now();
      await sleep(150);
      expect((await honest()).ok, "a client got past a full cap").toBe(false);
      const closed = await Promise.all(peers.map((p) => watchClose(p.raw, TIMEOUT + 2000)));
      expect(closed.filter((c) => c.closedAfter === undefined).length, "stalled handshakes still open").toBe(
        0,
      );
      expect(Date.now() - t0).toBeLessThan(TIMEOUT + 1500);
      expect(established, "a handshake completed: the stall did not hold").toBe(0);
      expect(await sessionsDrain()).toBe(true);
      expect(await honest()).toEqual({ ok: true });
    } finally {
      for (const p of peers) {
        p.tls.destroy();
        p.raw.destroy();
      }
    }
  });

  it(`${PEERS} that reset right after their ClientHello free the cap at once`, async () => {
    const peers = await Promise.all(Array.from({ length: PEERS }, () => stalledTls(1)));
    await sleep(100);
    for (const p of peers) p.raw.resetAndDestroy();
    expect(await eventually(() => proxy.server.sessions.size === 0, 500)).toBe(true);
    expect(await honest()).toEqual({ ok: true });
  });

  for (const [name, pair] of [
    ["expired", certs.clientExpired],
    ["untrusted", certs.untrusted],
  ] as const) {
    it(`${CAP} at once with ${name} client certificates: each refused with 28000, the cap recovers`, async () => {
      const cert = readFileSync(pair.cert);
      const key = readFileSync(pair.key);
      const results = await Promise.all(
        Array.from({ length: CAP }, async () => {
          const raw = await afterS();
          const t = tls.connect({ socket: raw, ca, servername: "localhost", cert, key });
          t.on("error", () => {});
          const ok = await new Promise<boolean>((r) => {
            t.once("secureConnect", () => r(true));
            t.once("close", () => r(false));
          });
          if (ok) t.write(startup());
          const got = await watchClose(t, TIMEOUT + 1500);
          raw.destroy();
          return got;
        }),
      );
      for (const r of results) {
        expect(r.closedAfter, "refused client left open").toBeDefined();
        // A FATAL 28000 inside TLS, nothing that looks like authentication.
        expect(r.data[0]).toBe(0x45);
        expect(r.data.toString("latin1")).toContain("C28000");
      }
      expect(await sessionsDrain()).toBe(true);
      expect(await honest()).toEqual({ ok: true });
    });
  }
});
