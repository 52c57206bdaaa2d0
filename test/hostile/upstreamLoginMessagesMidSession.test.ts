import { describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/index.ts";
import { frame } from "../support/hostile.ts";
import { proxyOverFake } from "../support/proxyOverFake.ts";

/**
 * PostgreSQL sends Authentication, BackendKeyData and NegotiateProtocolVersion only during the
 * login. An upstream that sends one mid-session (asking the client for its password again, or
 * handing it the backend's own cancel key) is not relayed: the client gets 08P01 and a close.
 */
const midSession: Record<string, Buffer> = {
  AuthenticationCleartextPassword: frame(0x52, Buffer.from([0, 0, 0, 3])),
  BackendKeyData: frame(0x4b, Buffer.from([0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78])),
  NegotiateProtocolVersion: frame(0x76, Buffer.from([0, 3, 0, 0, 0, 0, 0, 0])),
};

for (const [name, message] of Object.entries(midSession)) {
  for (const mode of ["session", "transaction"] as const) {
    describe(`an upstream sending ${name} mid-session (${mode} mode)`, () => {
      const login = proxyOverFake(mode, (s) => s.write(message));

      it("is never relayed: the client gets 08P01 and a close", async () => {
        const { client: c, offset } = await login();
        try {
          c.send(encodeQuery("SELECT 1"));
          await c.waitClosed(3000);
          expect(c.messages(offset).map((m) => m.type)).toEqual(["E"]);
          expect(c.errorCode(offset)).toBe("08P01");
        } finally {
          c.close();
        }
      });
    });
  }
}
