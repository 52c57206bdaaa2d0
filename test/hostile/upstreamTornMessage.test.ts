import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeQuery, encodeStartup } from "../../src/protocol/index.ts";
import { boundary, type FakeUpstream, fakeUpstream, frame, header, loginOk } from "../support/hostile.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * The upstream dies in the middle of a message (a DataRow whose header promised 60 bytes, 10
 * sent). pgwarden then writes its 08006 ErrorResponse, which lands inside the torn DataRow: the
 * client reads part of pgwarden's error text as row data and the rest as a message of garbage.
 * An ErrorResponse cannot be delivered in the middle of a message; a correct proxy writes nothing
 * more into a message it has begun relaying and just closes (the client reports a lost server).
 */

const rowDescription = frame(
  0x54,
  Buffer.concat([Buffer.from([0, 1]), Buffer.from("n\0"), Buffer.alloc(18)]),
);
const row = frame(0x44, Buffer.concat([Buffer.from([0, 1, 0, 0, 0, 1]), Buffer.from("7")]));
const torn = Buffer.concat([header(0x44, 60), Buffer.from([0, 1, 0, 0, 0, 50]), Buffer.alloc(4, 0x61)]);
const sent = Buffer.concat([rowDescription, row, torn]);

for (const mode of ["session", "transaction"] as const) {
  describe(`an upstream that dies mid-message (${mode} mode)`, () => {
    let upstream: FakeUpstream;
    let proxy: TestProxy;
    beforeAll(async () => {
      upstream = await fakeUpstream((s: Socket) => {
        s.write(loginOk());
        s.on("data", () => {
          s.write(sent);
          setTimeout(() => s.destroy(), 30);
        });
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

    it("nothing of pgwarden's own is written into the torn message", async () => {
      const c = await WireClient.open(proxy.port);
      try {
        c.send(
          encodeStartup(
            new Map([
              ["user", "alice"],
              ["database", "pgw_app"],
            ]),
          ),
        );
        await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
        const offset = c.received.length;
        c.send(encodeQuery("SELECT n FROM t"));
        await c.waitClosed(3000);
        const after = c.received.subarray(offset);
        // Everything PostgreSQL sent, and not one byte more.
        expect(after.subarray(0, sent.length).equals(sent)).toBe(true);
        expect(after.length - sent.length, "bytes written inside the torn DataRow").toBe(0);
      } finally {
        c.close();
      }
    });
  });
}
