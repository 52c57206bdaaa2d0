import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import type { ProxyEvent } from "../../src/runtime/EventSink.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/**
 * Session controls with small values: concurrent sessions per identity and per source (the lease
 * is taken after authentication), the idle timeout and the maximum lifetime, each ending the
 * session with a clear FATAL and an event.
 */

const proxies: TestProxy[] = [];
afterAll(async () => {
  for (const p of proxies) await p.close();
});
const proxyWith = async (sessions: Record<string, unknown>) => {
  const p = await startProxy({ sessions, log: { level: "info" } });
  proxies.push(p);
  return p;
};

const controls = (p: TestProxy) =>
  p.events.filter((e): e is Extract<ProxyEvent, { kind: "sessionControl" }> => e.kind === "sessionControl");

/** A connected client and the FATAL it receives when the proxy ends its session. */
const connected = async (p: TestProxy, overrides: Partial<pg.ClientConfig> = {}) => {
  const c = new pg.Client({ ...p.connection(), ...overrides });
  const ended = new Promise<Error & { code?: string }>((resolve) => c.on("error", resolve));
  await c.connect();
  return { client: c, ended };
};

const refusal = async (p: TestProxy, overrides: Partial<pg.ClientConfig> = {}) => {
  const c = new pg.Client({ ...p.connection(), ...overrides });
  c.on("error", () => {});
  try {
    await c.connect();
    return "connected";
  } catch (e) {
    return e as Error & { code?: string };
  } finally {
    await c.end().catch(() => {});
  }
};

describe("concurrent sessions (AC-10)", () => {
  it("per identity: one more than the limit gets 53300 naming the role; a slot frees when a session ends", async () => {
    const p = await proxyWith({ maxPerIdentity: 2, idleTimeoutMs: 0 });
    const a = await connected(p);
    const b = await connected(p);
    const refused = await refusal(p);
    expect(refused).toMatchObject({
      code: "53300",
      message: 'too many connections for role "postgres" (limit 2)',
    });
    expect(controls(p).at(-1)).toMatchObject({ control: "maxPerIdentity", identity: "postgres", limit: 2 });
    await a.client.end();
    await new Promise((r) => setTimeout(r, 100));
    const again = await connected(p);
    await again.client.end();
    await b.client.end();
  });

  it("a wrong password takes no slot (the lease comes after authentication)", async () => {
    const p = await proxyWith({ maxPerIdentity: 1, idleTimeoutMs: 0 });
    for (let i = 0; i < 3; i++)
      expect((await refusal(p, { password: "wrong" })) as Error).toMatchObject({ code: "28P01" });
    const ok = await connected(p);
    await ok.client.end();
  });

  it("per source address: 53300 naming the host", async () => {
    const p = await proxyWith({ maxPerSource: 1, idleTimeoutMs: 0 });
    const a = await connected(p);
    expect(await refusal(p)).toMatchObject({
      code: "53300",
      message: "too many connections from host 127.0.0.1 (limit 1)",
    });
    expect(controls(p).at(-1)).toMatchObject({ control: "maxPerSource", source: "127.0.0.1", limit: 1 });
    await a.client.end();
  });

  it("perIdentity replaces maxPerIdentity for that identity", async () => {
    const p = await proxyWith({ maxPerIdentity: 5, perIdentity: { postgres: 1 }, idleTimeoutMs: 0 });
    const a = await connected(p);
    expect(await refusal(p)).toMatchObject({ code: "53300" });
    await a.client.end();
  });
});

describe("session deadlines (SC-10, AC-12)", () => {
  it("idle timeout: an idle session ends with 57P05 and an event; activity keeps it alive", async () => {
    const p = await proxyWith({ idleTimeoutMs: 400 });
    const busy = await connected(p);
    const idle = await connected(p);
    const started = Date.now();
    // One session keeps talking every 150 ms for 1 s; the other says nothing.
    for (let i = 0; i < 7; i++) {
      await busy.client.query("select 1");
      await new Promise((r) => setTimeout(r, 150));
    }
    const error = await idle.ended;
    expect(error.code).toBe("57P05");
    expect(error.message).toBe("terminating connection due to idle-session timeout (400 ms)");
    expect(Date.now() - started).toBeLessThan(1200);
    expect((await busy.client.query("select 2 as two")).rows[0].two).toBe(2);
    expect(controls(p).filter((e) => e.control === "idleTimeout")).toHaveLength(1);
    await busy.client.end();
    await idle.client.end().catch(() => {});
  });

  it("a query running longer than the idle timeout is not idleness", async () => {
    const p = await proxyWith({ idleTimeoutMs: 300 });
    const c = await connected(p);
    expect((await c.client.query("select pg_sleep(0.8), 3 as three")).rows[0].three).toBe(3);
    await c.client.end();
  });

  it("maximum lifetime: ends even a busy session, with 57P01 and an event", async () => {
    const p = await proxyWith({ idleTimeoutMs: 0, maxLifetimeMs: 500 });
    const c = await connected(p);
    const started = Date.now();
    const q = c.client.query("select pg_sleep(3)").catch((e: Error & { code?: string }) => e);
    const error = (await q) as Error & { code?: string };
    expect(error.code).toBe("57P01");
    expect(error.message).toBe("terminating connection: maximum session lifetime (500 ms) reached");
    expect(Date.now() - started).toBeLessThan(1500);
    expect(controls(p).at(-1)).toMatchObject({ control: "maxLifetime", limit: 500 });
    await c.client.end().catch(() => {});
  });
});

describe("session deadlines over TLS", () => {
  it("activity on a TLS client leg is seen (the sampler reads the TLS socket)", async () => {
    const { tlsProxy } = await import("./support.ts");
    const { readFileSync } = await import("node:fs");
    const { testCerts } = await import("../support/certs.ts");
    const p = await tlsProxy({ mode: "require" }, { sessions: { idleTimeoutMs: 400 } });
    proxies.push(p);
    const c = await connected(p, {
      ssl: { ca: readFileSync(testCerts().ca.cert, "utf8"), servername: "localhost" },
    });
    for (let i = 0; i < 7; i++) {
      await c.client.query("select 1");
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(controls(p)).toHaveLength(0);
    const error = await c.ended;
    expect(error.code).toBe("57P05");
    await c.client.end().catch(() => {});
  });
});
