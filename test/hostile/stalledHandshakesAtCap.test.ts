import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScramClient } from "../../src/auth/scramClient.ts";
import { encodeSASLInitialResponse } from "../../src/protocol/frontend.ts";
import { encodeSSLRequest, encodeStartup } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { boundary, eventually, HalfOpenPeer, sleep, verifier } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/**
 * The client cap full of peers that stall at every step before login — a partial startup
 * packet, no answer to AuthenticationSASL, no SASLResponse after the SASLInitialResponse, a TLS
 * handshake that never gets past its first bytes — and that keep their write side open. All are
 * destroyed by auth.timeoutMs (plus the linger), and the cap takes honest clients again.
 */

const TIMEOUT = 1000;
const CAP = 16;
const CANCEL_CAP = 4;
/** Sockets still in their first packet are bounded by both caps together, at accept. */
const PEERS = CAP + CANCEL_CAP;
const PASSWORD = "alice-password";

let proxy: TestProxy;
beforeAll(async () => {
  const certs = testCerts();
  proxy = await startProxy(
    {
      ...boundary(),
      tls: { mode: "prefer", cert: certs.server.cert, key: certs.server.key },
      auth: { method: "scram-sha-256", timeoutMs: TIMEOUT, allowPasswordOverPlaintext: true },
      limits: { maxClientConnections: CAP, maxCancelConnections: CANCEL_CAP, lingerMs: 200 },
      log: { level: "warn" },
    },
    new Map([["alice", verifier(PASSWORD)]]),
  );
});
afterAll(() => proxy?.close());

const startup = () =>
  encodeStartup(
    new Map([
      ["user", "alice"],
      ["database", postgresInfo().appDatabase],
    ]),
  );

type Stall = (p: HalfOpenPeer) => Promise<void>;
const STALLS: Record<string, Stall> = {
  "partial startup packet": async (p) => p.write(startup().subarray(0, 9)),
  "startup, then silence": async (p) => p.write(startup()),
  "SASLInitialResponse, then silence": async (p) => {
    p.write(startup());
    await eventually(() => p.received.length > 0, 2000);
    p.write(
      encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(createScramClient(PASSWORD).clientFirst())),
    );
  },
  "SSLRequest, S, then three bytes of a ClientHello": async (p) => {
    p.write(encodeSSLRequest());
    await eventually(() => p.received.length > 0, 2000);
    p.write(Buffer.from([0x16, 0x03, 0x01]));
  },
};

const honest = async (): Promise<{ ok: boolean; code?: string }> => {
  const c = new pg.Client({
    host: "127.0.0.1",
    port: proxy.port,
    user: "alice",
    password: PASSWORD,
    database: postgresInfo().appDatabase,
  });
  c.on("error", () => {});
  try {
    await c.connect();
    await c.query("SELECT 1");
    return { ok: true };
  } catch (e) {
    return { ok: false, code: (e as { code?: string }).code };
  } finally {
    await c.end().catch(() => {});
  }
};

describe("the client cap full of stalled handshakes", () => {
  for (const [what, stall] of Object.entries(STALLS)) {
    it(`${PEERS} peers stalled at "${what}" are destroyed by the deadline and the cap recovers`, async () => {
      const peers = await Promise.all(Array.from({ length: PEERS }, () => HalfOpenPeer.open(proxy.port)));
      try {
        const t0 = Date.now();
        await Promise.all(peers.map(stall));
        await sleep(100);
        // Full: an honest client is refused (53300 once its startup packet is in) or not admitted at all.
        const meanwhile = await honest();
        expect(meanwhile.ok, "a client got past a full cap").toBe(false);
        const gone = await Promise.all(peers.map((p) => p.destroyedByServer(TIMEOUT + 2500)));
        expect(gone.filter((g) => !g).length, "stalled peers still held open").toBe(0);
        expect(Date.now() - t0).toBeLessThan(TIMEOUT + 3000);
        expect(await eventually(() => proxy.server.sessions.size === 0, 3000)).toBe(true);
        expect(await honest()).toEqual({ ok: true });
      } finally {
        for (const p of peers) p.destroy();
      }
    });
  }
});
