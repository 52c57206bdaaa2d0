import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TLS_SERVER_END_POINT, tlsServerEndPoint } from "../../src/auth/channelBinding.ts";
import { createScramClient } from "../../src/auth/scramClient.ts";
import type { ScramChannelBinding } from "../../src/auth/scramServer.ts";
import { decodeAuthentication } from "../../src/protocol/backend.ts";
import { encodeSASLInitialResponse, encodeSASLResponse } from "../../src/protocol/frontend.ts";
import { encodeSSLRequest } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { fieldsOf } from "../support/hostile.ts";
import { TEST_PASSWORD, type TestProxy } from "../support/proxy.ts";
import { splitMessages } from "../support/wire.ts";
import { logged, psql, startupFor, tlsProxy } from "./support.ts";

/**
 * SCRAM-SHA-256-PLUS with tls-server-end-point on the client leg: offered whenever the leg is TLS,
 * required by psql's channel_binding=require, and refused when the binding data is not pgwarden's
 * certificate. Passwords over a plaintext leg are refused unless allowed.
 */

const certs = testCerts();
let proxy: TestProxy;
let strict: TestProxy;
beforeAll(async () => {
  proxy = await tlsProxy({ mode: "prefer" });
  strict = await tlsProxy(
    { mode: "prefer" },
    { auth: { method: "scram-sha-256", allowPasswordOverPlaintext: false } },
  );
});
afterAll(async () => {
  await proxy.close();
  await strict.close();
});

/** One SASL exchange by hand over TLS (SSLRequest first), with the binding data given. */
const exchange = async (
  port: number,
  choose: (offered: readonly string[]) => { mechanism: string; client: ReturnType<typeof createScramClient> },
): Promise<{ offered: readonly string[]; outcome: string }> => {
  const raw = connect({ host: "127.0.0.1", port });
  await new Promise((r) => raw.once("connect", r));
  raw.write(encodeSSLRequest());
  await new Promise((r) => raw.once("data", r));
  const s = tls.connect({ socket: raw, ca: readFileSync(certs.ca.cert), servername: "localhost" });
  await new Promise((r) => s.once("secureConnect", r));
  let buf = Buffer.alloc(0);
  const waiters: (() => void)[] = [];
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (const w of waiters.splice(0)) w();
  });
  s.on("error", () => {});
  let closed = false;
  s.on("close", () => {
    closed = true;
    for (const w of waiters.splice(0)) w();
  });
  const nextMessage = async () => {
    for (;;) {
      if (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const len = 1 + buf.readInt32BE(1);
        const m = buf.subarray(0, len);
        buf = buf.subarray(len);
        return m;
      }
      if (closed) return undefined;
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  try {
    s.write(startupFor());
    const offer = decodeAuthentication((await nextMessage())!);
    if ("_tag" in offer || offer.kind !== "SASL") throw new Error("no SASL offer");
    const { mechanism, client } = choose(offer.mechanisms);
    s.write(encodeSASLInitialResponse(mechanism, Buffer.from(client.clientFirst())));
    const cont = (await nextMessage())!;
    if (cont[0] === 0x45) return { offered: offer.mechanisms, outcome: `E ${fieldsOf(cont).get("C")}` };
    const serverFirst = decodeAuthentication(cont);
    if ("_tag" in serverFirst || serverFirst.kind !== "SASLContinue") throw new Error("no SASLContinue");
    const final = client.handleServerFirst(serverFirst.data.toString("utf8"));
    if (typeof final !== "string") throw new Error(final.message);
    s.write(encodeSASLResponse(Buffer.from(final)));
    const answer = (await nextMessage())!;
    if (answer[0] === 0x45) return { offered: offer.mechanisms, outcome: `E ${fieldsOf(answer).get("C")}` };
    const done = decodeAuthentication(answer);
    if ("_tag" in done || done.kind !== "SASLFinal") throw new Error("no SASLFinal");
    return {
      offered: offer.mechanisms,
      outcome: client.verifyServerFinal(done.data.toString("utf8")) === true ? "ok" : "bad server",
    };
  } finally {
    s.destroy();
  }
};

const binding = (certPath: string): ScramChannelBinding => ({
  type: TLS_SERVER_END_POINT,
  data: tlsServerEndPoint(new X509Certificate(readFileSync(certPath)).raw) as Buffer,
});

describe("SCRAM-SHA-256-PLUS on the client leg", () => {
  it("psql channel_binding=require over TLS works and is logged as -PLUS", async () => {
    const r = await psql(proxy.port, "sslmode=require channel_binding=require");
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("ok");
    expect(logged(proxy, "client authenticated").at(-1)?.mechanism).toBe("SCRAM-SHA-256-PLUS");
  });

  it("psql channel_binding=require refuses a plaintext leg (nothing to bind to)", async () => {
    const r = await psql(proxy.port, "sslmode=disable channel_binding=require");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/channel binding/);
  });

  it("over plaintext only SCRAM-SHA-256 is offered (psql still logs in)", async () => {
    const r = await psql(proxy.port, "sslmode=disable");
    expect(r.stdout.trim()).toBe("ok");
    expect(logged(proxy, "client authenticated").at(-1)?.mechanism).toBe("SCRAM-SHA-256");
  });

  it("the binding of pgwarden's own certificate succeeds; a tampered binding fails with 28P01", async () => {
    const good = await exchange(proxy.port, () => {
      const client = createScramClient(TEST_PASSWORD, { channelBinding: binding(certs.server.cert) });
      return { mechanism: client.mechanism, client };
    });
    expect(good.offered).toEqual(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    expect(good.outcome).toBe("ok");
    // What a man in the middle with its own certificate would present: the wrong end point.
    const tampered = await exchange(proxy.port, () => {
      const client = createScramClient(TEST_PASSWORD, { channelBinding: binding(certs.server2.cert) });
      return { mechanism: client.mechanism, client };
    });
    expect(tampered.outcome).toBe("E 28P01");
    const reason = proxy.logs.filter((l) => l.msg === "client authentication failed").at(-1)?.reason;
    expect(reason).toBe("channel-binding-mismatch");
  });

  it("a client saying 'y' (thinks the server cannot bind) after a -PLUS offer is a downgrade, refused", async () => {
    const r = await exchange(proxy.port, () => ({
      mechanism: "SCRAM-SHA-256",
      client: createScramClient(TEST_PASSWORD, { cbindFlag: "y" }),
    }));
    // PostgreSQL's answer to this is a protocol violation too.
    expect(r.outcome).toBe("E 08P01");
    const reason = proxy.logs.filter((l) => l.msg === "client authentication failed").at(-1)?.reason;
    expect(reason).toBe("channel-binding-downgrade");
  });
});

describe("passwords over a plaintext client leg", () => {
  it("are refused with 28000 by default, before any authentication request", async () => {
    const r = await psql(strict.port, "sslmode=disable");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("password authentication over an unencrypted connection is not allowed");
  });

  it("are accepted over TLS", async () => {
    const r = await psql(strict.port, "sslmode=require");
    expect(r.stdout.trim()).toBe("ok");
  });

  it("the wire shows the refusal comes before AuthenticationSASL", async () => {
    const raw = connect({ host: "127.0.0.1", port: strict.port });
    await new Promise((r) => raw.once("connect", r));
    const chunks: Buffer[] = [];
    raw.on("data", (d: Buffer) => chunks.push(d));
    raw.write(startupFor());
    await new Promise((r) => raw.once("close", r));
    const types = splitMessages(Buffer.concat(chunks)).map((m) => m.type);
    expect(types).toEqual(["E"]);
  });
});
