import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy({ auth: { method: "trust" }, log: { level: "info" } });
});
afterAll(() => proxy.close());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("backpressure", () => {
  it("stops reading from PostgreSQL while the client does not read, and loses nothing", async () => {
    const c = await WireClient.open(proxy.port);
    c.send(
      encodeStartup(
        new Map([
          ["user", "postgres"],
          ["database", "postgres"],
        ]),
      ),
    );
    await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
    const session = [...proxy.server.sessions.values()].at(-1)!;
    const start = c.received.length;
    // 200,000 rows of 1 KB: about 200 MB the client will not read for a while.
    c.socket.pause();
    c.send(encodeQuery("SELECT repeat('x', 1000) FROM generate_series(1, 200000)"));
    await sleep(1500);
    const readWhilePaused = session.bytesFromServer;
    await sleep(500);
    // Only what fits in the socket buffers has moved; the proxy has stopped reading upstream.
    expect(readWhilePaused).toBeLessThan(32 * 1024 * 1024);
    expect(session.bytesFromServer - readWhilePaused).toBeLessThan(1024 * 1024);

    // Counting rows without keeping them: the whole result still arrives intact.
    let rows = 0;
    let pos = start;
    let pending = c.received.subarray(start);
    c.socket.removeAllListeners("data");
    const done = new Promise<void>((resolve) => {
      c.socket.on("data", (chunk: Buffer) => {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        pos = 0;
        while (pos + 5 <= pending.length) {
          const len = pending.readInt32BE(pos + 1);
          if (pos + 1 + len > pending.length) break;
          const type = pending[pos];
          if (type === 0x44) rows++;
          pos += 1 + len;
          if (type === 0x5a) resolve();
        }
        pending = pending.subarray(pos);
      });
    });
    c.socket.resume();
    await done;
    expect(rows).toBe(200000);
    expect(session.bytesFromServer).toBeGreaterThan(200 * 1000 * 1000);
    c.close();
  }, 60_000);
});
