import { readFileSync } from "node:fs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ProxyEvent } from "../../src/runtime/EventSink.ts";
import { testCerts } from "../support/certs.ts";
import type { TestProxy } from "../support/proxy.ts";
import { tlsProxy } from "./support.ts";

/** What a TLS session reports when it closes: bytes on the wire, and its handshake as an event. */

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await tlsProxy({ mode: "require" });
});
afterAll(() => proxy.close());

describe("a TLS session's events", () => {
  it("tlsHandshake names protocol and cipher; connectionClosed counts the client's bytes", async () => {
    const c = new pg.Client({
      ...proxy.connection(),
      ssl: { ca: readFileSync(testCerts().ca.cert, "utf8"), servername: "localhost" },
    });
    await c.connect();
    await c.query(`select '${"x".repeat(20_000)}'`);
    await c.end();
    await new Promise((r) => setTimeout(r, 200));
    const handshake = proxy.events.find((e) => e.kind === "tlsHandshake");
    expect(handshake).toMatchObject({ ok: true, protocol: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384" });
    const closed = proxy.events.find(
      (e): e is Extract<ProxyEvent, { kind: "connectionClosed" }> => e.kind === "connectionClosed",
    );
    expect(closed?.bytesFromClient).toBeGreaterThan(20_000);
  });
});

describe("the FIPS status at start", () => {
  it("is emitted as an event once the server listens", async () => {
    const { decodeConfig } = await import("../../src/runtime/config.ts");
    const { startServer } = await import("../../src/runtime/Server.ts");
    const { createLogger } = await import("../../src/runtime/logger.ts");
    const config = decodeConfig({ listen: { port: 0 }, log: { level: "silent" } });
    if ("_tag" in config) throw new Error(config.message);
    const events: ProxyEvent[] = [];
    const server = await startServer({
      config: { ...config, fips: true },
      log: createLogger("silent"),
      users: () => new Map(),
      events: { emit: (e) => events.push(e) },
      fipsStatus: {
        fipsMode: true,
        nodeOpenssl: "3",
        opensslConf: undefined,
        opensslModules: undefined,
        providers: [{ id: "fips", name: "OpenSSL FIPS Provider", version: "3.0.9", status: "active" }],
        probes: [{ name: "sha256", expect: "works", ok: true }],
        ok: true,
      },
    });
    await server.stop();
    expect(events.find((e) => e.kind === "fipsStatus")).toEqual({
      kind: "fipsStatus",
      enabled: true,
      passed: true,
      provider: "OpenSSL FIPS Provider",
      results: [{ name: "sha256", ok: true }],
    });
  });
});
