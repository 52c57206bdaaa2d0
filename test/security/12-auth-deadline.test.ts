import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeStartup } from "../../src/protocol/startup.ts";
import {
  authMessages,
  boundary,
  type FakeUpstream,
  fakeUpstream,
  HalfOpenPeer,
  int32,
  scramExchange,
  sleep,
  verifier,
} from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * One deadline, auth.timeoutMs, covers everything before the first ReadyForQuery: a first packet
 * that never completes, client authentication, and the upstream login.
 */

const TIMEOUT = 1000;
const SLACK = 800;

let silent: FakeUpstream;
let proxy: TestProxy;
const PASSWORD = "alice-password";
beforeAll(async () => {
  // Accepts TCP, reads the startup packet, never answers.
  silent = await fakeUpstream(() => {});
  proxy = await startProxy(
    {
      ...boundary(),
      upstream: { ...boundary().upstream, host: "127.0.0.1", port: silent.port, connectTimeoutMs: 5000 },
      auth: { method: "scram-sha-256", timeoutMs: TIMEOUT },
      log: { level: "warn" },
    },
    new Map([["alice", verifier(PASSWORD)]]),
  );
});
afterAll(async () => {
  await proxy?.close();
  await silent?.close();
});

const startup = () =>
  encodeStartup(
    new Map([
      ["user", "alice"],
      ["database", postgresInfo().appDatabase],
    ]),
  );

describe("the single pre-ReadyForQuery deadline", () => {
  it("destroys a half-open connection that sent 3 of its 8 first bytes once auth.timeoutMs passes", async () => {
    const p = await HalfOpenPeer.open(proxy.port);
    try {
      const t0 = Date.now();
      p.write(int32(8).subarray(0, 3));
      expect(await p.destroyedByServer(TIMEOUT + 2000)).toBe(true);
      const elapsed = Date.now() - t0;
      expect(elapsed).toBeGreaterThanOrEqual(TIMEOUT - 100);
      expect(elapsed).toBeLessThan(TIMEOUT + SLACK + 200);
    } finally {
      p.destroy();
    }
  });

  it("bounds an upstream that never answers the startup by the same deadline, SCRAM time included", async () => {
    const c = await WireClient.open(proxy.port);
    try {
      const t0 = Date.now();
      c.send(startup());
      await c.until((x) => authMessages(x, 10).length > 0, 2000, "AuthenticationSASL");
      // The client spends half the budget before authenticating; the upstream then hangs.
      await sleep(TIMEOUT / 2);
      await scramExchange(c, PASSWORD);
      await c.waitClosed(TIMEOUT + 5000);
      const elapsed = Date.now() - t0;
      expect(c.errorCode(), "no ErrorResponse before the close").toMatch(/^[0-9A-Z]{5}$/);
      expect(c.messages().some((m) => m.type === "Z")).toBe(false);
      expect(elapsed).toBeLessThan(TIMEOUT + SLACK);
    } finally {
      c.close();
    }
  });
});
