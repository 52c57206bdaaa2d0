import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  encodeBind,
  encodeExecute,
  encodeParse,
  encodeQuery,
  encodeStartup,
  encodeSync,
} from "../../src/protocol/index.ts";
import { boundary, type FakeUpstream, fakeUpstream, frame, header, loginOk } from "../support/hostile.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 9: the server leg was trusted too much. A frame with an invalid type byte from the
 * upstream was relayed; a truncated invalid one left the client waiting; after an upstream crash a
 * client sometimes got a bare close without SQLSTATE; on both legs an invalid type byte was judged
 * only once its declared body had arrived.
 */

/** What the fake PostgreSQL does once a client's first message after login arrives. */
let script: (s: Socket, data: Buffer) => void = () => {};
/** Runs right after the fake PostgreSQL has sent its login answer. */
let afterLogin: (s: Socket) => void = () => {};

let upstream: FakeUpstream;
let proxy: TestProxy;
beforeAll(async () => {
  upstream = await fakeUpstream((s) => {
    s.write(loginOk());
    afterLogin(s);
    s.on("data", (d: Buffer) => script(s, d));
  });
  proxy = await startProxy({
    ...boundary(),
    upstream: { ...boundary().upstream, host: "127.0.0.1", port: upstream.port },
    auth: { method: "trust" },
    log: { level: "warn" },
  });
});
afterAll(async () => {
  await proxy?.close();
  await upstream?.close();
});

const ready = async (): Promise<WireClient> => {
  const c = await WireClient.open(proxy.port);
  c.send(
    encodeStartup(
      new Map([
        ["user", "alice"],
        ["database", "pgw_app"],
      ]),
    ),
  );
  await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
  return c;
};

/** The client got an ErrorResponse carrying a SQLSTATE, and then the connection closed. */
const endedWithSqlstate = async (c: WireClient, offset: number, ms = 2000): Promise<string | undefined> => {
  await c.waitClosed(ms);
  return c.errorCode(offset);
};

describe("server leg", () => {
  it("a complete frame with an invalid type byte from the upstream: 08P01 to the client, not the frame", async () => {
    afterLogin = () => {};
    script = (s) => s.write(frame(0x01, Buffer.from("not a message")));
    const c = await ready();
    const offset = c.received.length;
    c.send(encodeQuery("SELECT 1"));
    expect(await endedWithSqlstate(c, offset)).toBe("08P01");
    expect(c.messages(offset).map((m) => m.type)).toEqual(["E"]);
  });

  it("a truncated message with an invalid type byte: error and close at once, not after 60,000 bytes", async () => {
    afterLogin = () => {};
    // Type 0x00, length claiming 60,000 bytes, 10 bytes sent; the upstream stays open.
    script = (s) => s.write(Buffer.concat([header(0x00, 60_000), Buffer.alloc(5)]));
    const c = await ready();
    const offset = c.received.length;
    const t0 = Date.now();
    c.send(encodeQuery("SELECT 1"));
    expect(await endedWithSqlstate(c, offset, 3000)).toMatch(/^08/);
    expect(Date.now() - t0).toBeLessThan(1500);
  });

  it("an upstream crash while idle always reaches the client as an ErrorResponse with a SQLSTATE (20 times)", async () => {
    script = () => {};
    for (let i = 0; i < 20; i++) {
      afterLogin = (s) => {
        setTimeout(() => (i % 2 === 0 ? s.destroy() : s.resetAndDestroy()), 20 + (i % 5) * 7);
      };
      const c = await ready();
      const offset = c.received.length;
      const code = await endedWithSqlstate(c, offset);
      expect(code, `run ${i}: bare close`).toMatch(/^(08006|57P01|57P02|57P03|XX000)$/);
    }
  });

  it("an upstream crash mid extended query always reaches the client as an ErrorResponse with a SQLSTATE (20 times)", async () => {
    afterLogin = () => {};
    for (let i = 0; i < 20; i++) {
      script = (s) => {
        // ParseComplete and BindComplete, then gone.
        s.write(Buffer.concat([frame(0x31), frame(0x32)]));
        if (i % 2 === 0) s.destroy();
        else s.resetAndDestroy();
      };
      const c = await ready();
      const offset = c.received.length;
      c.send(
        encodeParse({ name: "", query: "SELECT $1::int", paramTypes: [] }),
        encodeBind({
          portal: "",
          statement: "",
          paramFormats: [],
          params: [Buffer.from("1")],
          resultFormats: [],
        }),
        encodeExecute({ portal: "", maxRows: 0 }),
        encodeSync(),
      );
      const code = await endedWithSqlstate(c, offset);
      expect(code, `run ${i}: bare close`).toMatch(/^(08006|57P01|57P02|57P03|XX000)$/);
    }
  });
});

describe("server leg, crash mid result", () => {
  it("an upstream crash between DataRows (at a message boundary) reaches the client with a SQLSTATE (20 times)", async () => {
    afterLogin = () => {};
    const rowDescription = frame(
      0x54,
      Buffer.concat([Buffer.from([0, 1]), Buffer.from("n\0"), Buffer.alloc(18)]),
    );
    const row = frame(0x44, Buffer.concat([Buffer.from([0, 1, 0, 0, 0, 1]), Buffer.from("7")]));
    for (let i = 0; i < 20; i++) {
      script = (s) => {
        s.write(Buffer.concat([rowDescription, ...Array.from({ length: 200 * (i + 1) }, () => row)]));
        if (i % 2 === 0) s.destroy();
        else s.resetAndDestroy();
      };
      const c = await ready();
      const offset = c.received.length;
      c.send(encodeQuery("SELECT n FROM t"));
      const code = await endedWithSqlstate(c, offset);
      expect(code, `run ${i}: bare close`).toMatch(/^(08006|57P01|57P02|57P03|XX000)$/);
    }
  });
});

describe("client leg", () => {
  it("an invalid type byte after ReadyForQuery is a violation on sight, before its declared body", async () => {
    afterLogin = () => {};
    script = () => {};
    const c = await ready();
    const offset = c.received.length;
    const t0 = Date.now();
    // 9,000 bytes declared: under the small-message cap, so only the type can condemn it.
    c.send(header(0x01, 9_000));
    await c.waitClosed(2000);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(c.errorCode(offset)).toBe("08P01");
  });
});
