import { afterEach, describe, expect, it } from "vitest";
import { createScramClient, type ScramClient } from "../../src/auth/scramClient.ts";
import { encodeSASLInitialResponse, encodeSASLResponse } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import {
  authMessages,
  boundary,
  isCancel,
  scramExchange,
  sleep,
  type Tap,
  tcpTap,
  verifier,
} from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 5: a shutdown while a client was in the middle of SCRAM let the exchange finish, wrote
 * AuthenticationOk after end() and started an upstream login.
 */

let proxy: TestProxy | undefined;
let tap: Tap | undefined;
afterEach(async () => {
  await proxy?.close();
  await tap?.close();
  proxy = tap = undefined;
});

const PASSWORD = "alice-password";

const startup = () =>
  encodeStartup(
    new Map([
      ["user", "alice"],
      ["database", postgresInfo().appDatabase],
    ]),
  );

const setUp = async (shutdown: Record<string, number> = {}) => {
  tap = await tcpTap();
  proxy = await startProxy(
    {
      ...boundary(),
      upstream: { ...boundary().upstream, host: "127.0.0.1", port: tap.port },
      auth: { method: "scram-sha-256" },
      shutdown,
    },
    new Map([["alice", verifier(PASSWORD)]]),
  );
  // Control: a login that completes is seen by the tap, so a count of zero later means something.
  const ok = await WireClient.open(proxy.port);
  ok.send(startup());
  await scramExchange(ok, PASSWORD);
  await ok.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
  ok.close();
  expect(logins(tap)).toBe(1);
  return { proxy, tap };
};

const AUTH_OK = 0;

/** Connections the tap saw that were not CancelRequests. */
const logins = (t: Tap): number => t.connections.filter((c) => !isCancel(c)).length;

/** Sends client-first, and client-final once server-first arrives; stops quietly if cut off. */
const continueScram = async (c: WireClient, scram: ScramClient, sentFirst: boolean): Promise<void> => {
  if (!sentFirst) c.send(encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(scram.clientFirst())));
  const got = await c
    .until((x) => authMessages(x, 11).length > 0, 1000, "SASLContinue")
    .then(() => true)
    .catch(() => false);
  if (!got || sentFirst) return;
  const final = scram.handleServerFirst(authMessages(c, 11)[0]!.toString("utf8", 9));
  if (typeof final === "string") c.send(encodeSASLResponse(Buffer.from(final)));
};

const cases = [
  ["stop", "AuthenticationSASL"],
  ["stop", "SASLContinue"],
  ["drain", "AuthenticationSASL"],
  ["drain", "SASLContinue"],
] as const;

describe("shutdown while a client is in SCRAM", () => {
  for (const [how, after] of cases) {
    it(`${how} after ${after}: the client gets 57P01, never AuthenticationOk, and no upstream login starts`, async () => {
      const { proxy: p, tap: t } = await setUp({ drainTimeoutMs: 200 });
      const c = await WireClient.open(p.port);
      const scram = createScramClient(PASSWORD);
      c.send(startup());
      await c.until((x) => authMessages(x, 10).length > 0, 5000, "AuthenticationSASL");
      if (after === "SASLContinue") {
        c.send(encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(scram.clientFirst())));
        await c.until((x) => authMessages(x, 11).length > 0, 5000, "SASLContinue");
      }
      const expected = c.messages().map((m) => m.type);
      const ending = how === "stop" ? p.server.stop() : p.server.drain();
      if (how === "drain") await sleep(400);
      // The client goes on with a valid exchange, as one unaware of the shutdown would.
      if (after === "SASLContinue") {
        const final = scram.handleServerFirst(authMessages(c, 11)[0]!.toString("utf8", 9));
        if (typeof final === "string") c.send(encodeSASLResponse(Buffer.from(final)));
      } else await continueScram(c, scram, false);
      await c.until((x) => x.closed, 3000, "the proxy to close").catch(() => {});
      await ending;
      proxy = undefined;
      await sleep(300);
      expect(authMessages(c, AUTH_OK), "AuthenticationOk was sent").toEqual([]);
      expect(c.messages().map((m) => m.type)).toEqual([...expected, "E"]);
      expect(c.errorCode()).toBe("57P01");
      expect(c.closed).toBe(true);
      expect(logins(t), "an upstream login was started").toBe(1);
    });
  }
});
