import { describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/index.ts";
import { frame } from "../support/hostile.ts";
import { proxyOverFake } from "../support/proxyOverFake.ts";

/**
 * In transaction mode every reply is matched to the request it answers. A simple query is never
 * answered with extended-protocol replies: an upstream that slips one in (ParseComplete,
 * BindComplete, …) is not relayed; the client gets 08P01 and a close.
 */
const answer = Buffer.concat([frame(0x43, Buffer.from("SELECT 0\0")), frame(0x5a, Buffer.from("I"))]);
const unrequested: Record<string, Buffer> = {
  ParseComplete: frame(0x31),
  BindComplete: frame(0x32),
  NoData: frame(0x6e),
  PortalSuspended: frame(0x73),
};

for (const [name, message] of Object.entries(unrequested)) {
  describe(`an upstream answering a simple query with ${name} (transaction mode)`, () => {
    const login = proxyOverFake("transaction", (s) => s.write(Buffer.concat([message, answer])));

    it("is never relayed: the client gets 08P01 and a close", async () => {
      const { client: c, offset } = await login();
      try {
        c.send(encodeQuery("SELECT"));
        await c.waitClosed(3000);
        expect(c.messages(offset).map((m) => m.type)).toEqual(["E"]);
        expect(c.errorCode(offset)).toBe("08P01");
      } finally {
        c.close();
      }
    });
  });
}
