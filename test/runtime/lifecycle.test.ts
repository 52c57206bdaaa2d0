import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/frontend.ts";
import { encodeGSSENCRequest, encodeSSLRequest, encodeStartup } from "../../src/protocol/startup.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

let proxy: TestProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

const startup = (minor = 0, extra: [string, string][] = []) =>
  encodeStartup(new Map([["user", "postgres"], ["database", "postgres"], ...extra]), minor);

const readyCount = (c: WireClient) => c.messages().filter((m) => m.type === "Z").length;

describe("first packet", () => {
  it("refuses SSL and GSS encryption with N, then serves the plaintext startup", async () => {
    proxy = await startProxy({ auth: { method: "trust" } });
    const c = await WireClient.open(proxy.port);
    c.send(encodeGSSENCRequest());
    await c.until((x) => x.received.length >= 1, 2000, "GSS answer");
    expect(c.received.toString("latin1", 0, 1)).toBe("N");
    c.send(encodeSSLRequest());
    await c.until((x) => x.received.length >= 2, 2000, "SSL answer");
    expect(c.received.toString("latin1", 0, 2)).toBe("NN");
    c.send(startup());
    await c.until((x) => x.messages(2).some((m) => m.type === "Z"), 5000, "ReadyForQuery");
    const causes = proxy.transitions
      .filter((t) => t.connectionId === [...proxy!.server.sessions.keys()][0])
      .map((t) => t.cause);
    expect(causes).toEqual(["GSSENCRequest", "SSLRequest", "Startup", "ClientAuthOk", "UpstreamReady"]);
    c.close();
  });

  it("closes a direct-TLS attempt when TLS is not configured", async () => {
    proxy = await startProxy({ auth: { method: "trust" } });
    const c = await WireClient.open(proxy.port);
    c.send(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]));
    await c.waitClosed();
    expect(c.received.length).toBe(0);
  });

  it("gives protocol 3.2 clients a 32-byte cancel key with the backend's real PID, 3.0 clients 4 bytes", async () => {
    proxy = await startProxy({ auth: { method: "trust" } });
    for (const [minor, secretLength] of [
      [2, 32],
      [0, 4],
    ] as const) {
      const c = await WireClient.open(proxy.port);
      c.send(startup(minor));
      await c.until((x) => readyCount(x) === 1, 5000, "ReadyForQuery");
      const key = c.messages().find((m) => m.type === "K")!.msg;
      expect(key.length - 9).toBe(secretLength);
      const pid = key.readInt32BE(5);
      const offset = c.received.length;
      c.send(encodeQuery("SELECT pg_backend_pid()"));
      await c.until((x) => x.messages(offset).some((m) => m.type === "Z"), 5000, "query result");
      const row = c.messages(offset).find((m) => m.type === "D")!.msg;
      expect(Number(row.subarray(11).toString())).toBe(pid);
      c.close();
    }
  });

  it("negotiates down from an unknown minor version and lists unsupported _pq_ options", async () => {
    proxy = await startProxy({ auth: { method: "trust" } });
    const c = await WireClient.open(proxy.port);
    c.send(startup(5, [["_pq_.future_feature", "on"]]));
    await c.until((x) => readyCount(x) === 1, 5000, "ReadyForQuery");
    const v = c.messages().find((m) => m.type === "v")!.msg;
    expect(v.readInt32BE(5)).toBe(0x00030002);
    expect(v.readInt32BE(9)).toBe(1);
    expect(v.subarray(13, v.length - 1).toString()).toBe("_pq_.future_feature");
    c.close();
  });

  it("answers a missing user name with 28000", async () => {
    proxy = await startProxy({ auth: { method: "trust" } });
    const c = await WireClient.open(proxy.port);
    c.send(encodeStartup(new Map([["database", "postgres"]])));
    await c.waitClosed();
    expect(c.errorCode()).toBe("28000");
  });
});

describe("limits and shutdown", () => {
  it("refuses the connection over maxClientConnections with 53300 and keeps serving the others", async () => {
    proxy = await startProxy({ limits: { maxClientConnections: 2 } });
    const a = new pg.Client(proxy.connection());
    const b = new pg.Client(proxy.connection());
    await a.connect();
    await b.connect();
    const c = new pg.Client(proxy.connection());
    await expect(c.connect()).rejects.toMatchObject({ code: "53300" });
    expect((await a.query("SELECT 7 AS n")).rows).toEqual([{ n: 7 }]);
    await a.end();
    await b.end();
  });

  it("drains: running queries finish, new connections are refused, stragglers get 57P01 at the deadline", async () => {
    proxy = await startProxy({ shutdown: { drainTimeoutMs: 1500 } });
    const busy = new pg.Client(proxy.connection());
    const idle = new pg.Client(proxy.connection());
    await busy.connect();
    await idle.connect();
    const idleError = new Promise<{ code?: string }>((resolve) =>
      idle.on("error", (e) => resolve(e as { code?: string })),
    );
    const running = busy.query("SELECT pg_sleep(0.5) AS slept");
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    const drained = proxy.server.drain();
    await new Promise((r) => setTimeout(r, 100));
    const late = new pg.Client(proxy.connection());
    await expect(late.connect()).rejects.toThrow();
    expect((await running).rows).toEqual([{ slept: "" }]);
    await busy.end();
    expect((await idleError).code).toBe("57P01");
    await drained;
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    expect(proxy.server.sessions.size).toBe(0);
    proxy = undefined;
  });

  it("stop ends every session at once with 57P01", async () => {
    proxy = await startProxy({ shutdown: { drainTimeoutMs: 60_000 } });
    const c = new pg.Client(proxy.connection());
    await c.connect();
    const err = new Promise<{ code?: string }>((resolve) =>
      c.on("error", (e) => resolve(e as { code?: string })),
    );
    const started = Date.now();
    await proxy.server.stop();
    expect((await err).code).toBe("57P01");
    expect(Date.now() - started).toBeLessThan(3000);
    proxy = undefined;
  });
});

describe("timeouts", () => {
  it("drops a connection that never completes its first packet, and one that stalls in SCRAM", async () => {
    proxy = await startProxy({ auth: { method: "scram-sha-256", timeoutMs: 300 } });
    const silent = await WireClient.open(proxy.port);
    silent.send(Buffer.from([0, 0, 0, 40]));
    const t0 = Date.now();
    await silent.waitClosed(3000);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(silent.received.length).toBe(0);

    const stalled = await WireClient.open(proxy.port);
    stalled.send(startup());
    await stalled.waitClosed(3000);
    const types = stalled.messages().map((m) => m.type);
    expect(types).toEqual(["R", "E"]);
    expect(stalled.errorCode()).toBe("08006");
    for (let i = 0; i < 40 && proxy.server.sessions.size > 0; i++)
      await new Promise((r) => setTimeout(r, 25));
    expect(proxy.server.sessions.size).toBe(0);
  });
});
