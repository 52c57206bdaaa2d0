import type { Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { encodeQuery, encodeStartup } from "../../src/protocol/index.ts";
import { boundary, type FakeUpstream, fakeUpstream, frame, loginOk, sleep } from "../support/hostile.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * pgwarden's own queries on a server connection — session mode's reset (DISCARD ALL), the
 * liveness check, a client's settings replayed on checkout — wait for their ReadyForQuery with no
 * deadline. An upstream that accepts the query and never answers (a backend that hangs, a host
 * that stopped) keeps that connection in the pool's count for ever: with a pool of one, nobody is
 * served again. Every phase must be bounded: a correct pooler gives up on the connection (as on a
 * login that overruns serverConnectTimeoutMs) and opens another.
 */

const rowDescription = frame(
  0x54,
  Buffer.concat([Buffer.from([0, 1]), Buffer.from("n\0"), Buffer.alloc(18)]),
);
const answer = Buffer.concat([
  rowDescription,
  frame(0x44, Buffer.concat([Buffer.from([0, 1, 0, 0, 0, 1]), Buffer.from("7")])),
  frame(0x43, Buffer.from("SELECT 1\0")),
  frame(0x5a, Buffer.from("I")),
]);

/** Answers every Query, except those matching `silentOn` on the first connection. */
const upstreamSilentOn = (silentOn: RegExp): Promise<FakeUpstream> =>
  fakeUpstream((s: Socket, index: number) => {
    s.write(loginOk(4000 + index));
    s.on("data", (d: Buffer) => {
      if (index === 0 && silentOn.test(d.toString("latin1"))) return;
      s.write(answer);
    });
  });

let proxy: TestProxy | undefined;
let upstream: FakeUpstream | undefined;
afterEach(async () => {
  await proxy?.close();
  await upstream?.close();
  proxy = upstream = undefined;
});

const login = async (port: number, params: [string, string][] = []): Promise<WireClient> => {
  const c = await WireClient.open(port);
  c.send(encodeStartup(new Map([["user", "alice"], ["database", "pgw_app"], ...params])));
  return c;
};

/** Tries to log in and run a query until `ms` passes; true once one client was served. */
const servedWithin = async (port: number, ms: number, params: [string, string][] = []): Promise<boolean> => {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const c = await login(port, params);
    try {
      await c.until((x) => x.messages().some((m) => m.type === "Z" || m.type === "E"), 2500, "login");
      if (c.errorCode() === undefined) {
        const off = c.received.length;
        c.send(encodeQuery("SELECT 1"));
        await c.until((x) => x.messages(off).some((m) => m.type === "Z" || m.type === "E"), 2500, "answer");
        if (c.errorCode(off) === undefined) return true;
      }
    } catch {
      // Not served this time: try again.
    } finally {
      c.close();
    }
    await sleep(200);
  }
  return false;
};

describe("an upstream that never answers pgwarden's own query", () => {
  it("session mode: a reset (DISCARD ALL) that never returns does not take the pool's only connection for ever", async () => {
    upstream = await upstreamSilentOn(/DISCARD ALL/);
    proxy = await startProxy({
      ...boundary(),
      upstream: { ...boundary().upstream, host: "127.0.0.1", port: upstream.port },
      auth: { method: "trust", timeoutMs: 2000 },
      pool: { mode: "session", size: 1, serverConnectTimeoutMs: 1000 },
      log: { level: "warn" },
    });
    const first = await login(proxy.port);
    await first.until((x) => x.messages().some((m) => m.type === "Z"), 3000, "login");
    first.send(encodeQuery("SELECT 1"));
    await first.until((x) => x.messages().filter((m) => m.type === "Z").length === 2, 3000, "answer");
    // The client leaves; its connection is reset with DISCARD ALL, which never returns.
    first.close();
    expect(await servedWithin(proxy.port, 12_000), "no client was served again").toBe(true);
    expect(upstream.sockets.length).toBeGreaterThan(1);
  }, 20_000);

  it("transaction mode: a replay of the client's settings that never returns does not take the pool's only connection for ever", async () => {
    upstream = await upstreamSilentOn(/application_name/);
    proxy = await startProxy({
      ...boundary(),
      upstream: { ...boundary().upstream, host: "127.0.0.1", port: upstream.port },
      auth: { method: "trust", timeoutMs: 2000 },
      pool: { mode: "transaction", size: 1, serverConnectTimeoutMs: 1000, queryWaitTimeoutMs: 2000 },
      log: { level: "warn" },
    });
    const c = await login(proxy.port, [["application_name", "hostile-replay"]]);
    try {
      // Its settings are replayed at login: that login ends (here with an error) by its deadline.
      await c.until((x) => x.closed || x.messages().some((m) => m.type === "Z"), 5000, "the login to end");
    } finally {
      c.close();
    }
    // Clients without that setting need no replay; the pool's only connection must come back.
    expect(await servedWithin(proxy.port, 8000), "no client was served again").toBe(true);
  }, 25_000);
});
