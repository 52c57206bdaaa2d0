import type { Socket } from "node:net";
import { afterAll, beforeAll } from "vitest";
import { encodeStartup } from "../../src/protocol/index.ts";
import { boundary, type FakeUpstream, fakeUpstream, loginOk } from "./hostile.ts";
import { startProxy, type TestProxy } from "./proxy.ts";
import { WireClient } from "./wire.ts";

/**
 * For one describe block: a fake upstream that logs in and hands every later read to `onQuery`,
 * behind a pgwarden in `mode` with a pool of one. Gives a function that logs a client in and
 * returns it with the offset its next replies start at.
 */
export const proxyOverFake = (
  mode: "session" | "transaction",
  onQuery: (socket: Socket) => void,
): (() => Promise<{ client: WireClient; offset: number }>) => {
  let upstream: FakeUpstream | undefined;
  let proxy: TestProxy | undefined;
  beforeAll(async () => {
    upstream = await fakeUpstream((s: Socket) => {
      s.write(loginOk());
      s.on("data", () => onQuery(s));
    });
    proxy = await startProxy({
      ...boundary(),
      upstream: { ...boundary().upstream, host: "127.0.0.1", port: upstream.port },
      auth: { method: "trust" },
      pool: { mode, size: 1 },
      log: { level: "warn" },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await upstream?.close();
  });
  return async () => {
    const client = await WireClient.open(proxy!.port);
    client.send(
      encodeStartup(
        new Map([
          ["user", "alice"],
          ["database", "pgw_app"],
        ]),
      ),
    );
    await client.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
    return { client, offset: client.received.length };
  };
};
