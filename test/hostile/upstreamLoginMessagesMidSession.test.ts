import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeQuery, encodeStartup } from "../../src/protocol/index.ts";
import { boundary, type FakeUpstream, fakeUpstream, frame, loginOk } from "../support/hostile.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

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
      let upstream: FakeUpstream;
      let proxy: TestProxy;
      beforeAll(async () => {
        upstream = await fakeUpstream((s: Socket) => {
          s.write(loginOk());
          s.on("data", () => s.write(message));
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

      it("is never relayed: the client gets 08P01 and a close", async () => {
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
          c.send(encodeQuery("SELECT 1"));
          await c.waitClosed(3000);
          const types = c.messages(offset).map((m) => m.type);
          expect(types).toEqual(["E"]);
          expect(c.errorCode(offset)).toBe("08P01");
        } finally {
          c.close();
        }
      });
    });
  }
}
