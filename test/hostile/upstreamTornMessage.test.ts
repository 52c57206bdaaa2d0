import { describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/index.ts";
import { frame, header } from "../support/hostile.ts";
import { proxyOverFake } from "../support/proxyOverFake.ts";

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
    const login = proxyOverFake(mode, (s) => {
      s.write(sent);
      setTimeout(() => s.destroy(), 30);
    });

    it("nothing of pgwarden's own is written into the torn message", async () => {
      const { client: c, offset } = await login();
      try {
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
