import { describe, expect, it } from "vitest";
import { createScramClient, selectScramOptions } from "../../src/auth/scramClient.ts";
import { createScramServer } from "../../src/auth/scramServer.ts";
import { deriveScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { must, mustFail, RFC7677 } from "./fixtures.ts";

const rfcClient = () =>
  createScramClient(RFC7677.password, { nonce: RFC7677.clientNonce, username: RFC7677.username });

/** A client that has sent client-first and is waiting for server-first. */
const started = () => {
  const client = createScramClient("pencil", { nonce: RFC7677.clientNonce });
  client.clientFirst();
  return client;
};

describe("createScramClient: RFC 7677 test vector", () => {
  it("produces the published client messages and accepts the server signature", () => {
    const client = rfcClient();
    expect(client.clientFirst()).toBe(RFC7677.clientFirst);
    expect(client.handleServerFirst(RFC7677.serverFirst)).toBe(RFC7677.clientFinal);
    expect(client.verifyServerFinal(RFC7677.serverFinal)).toBe(true);
  });
});

describe("createScramClient", () => {
  it("sends libpq's client-first by default: no binding, empty username, 24-character nonce", () => {
    expect(createScramClient("x").clientFirst()).toMatch(/^n,,n=,r=[A-Za-z0-9+/]{24}$/);
  });

  it("returns the same client-first on every call", () => {
    const client = createScramClient("x");
    expect(client.clientFirst()).toBe(client.clientFirst());
  });

  it("escapes ',' and '=' in the username", () => {
    expect(createScramClient("x", { username: "a,b=c", nonce: "abcdefgh" }).clientFirst()).toBe(
      "n,,n=a=2Cb=3Dc,r=abcdefgh",
    );
  });

  it('sends "y,," and c=eSws when asked to', () => {
    const client = createScramClient("x", { cbindFlag: "y", nonce: "abcdefgh" });
    expect(client.clientFirst()).toBe("y,,n=,r=abcdefgh");
    const final = must(client.handleServerFirst("r=abcdefghSERVERNONCE,s=QUJD,i=1"));
    expect(final).toMatch(/^c=eSws,r=abcdefghSERVERNONCE,p=/);
  });

  it("logs in to the pgwarden server and verifies it", () => {
    const verifier = deriveScramVerifier("correct horse", { iterations: 64 });
    const server = createScramServer(verifier, { user: "bob", mockSecret: Buffer.alloc(32) });
    const client = createScramClient("correct horse");
    const final = must(client.handleServerFirst(must(server.handleClientFirst(client.clientFirst()))));
    expect(client.verifyServerFinal(must(server.handleClientFinal(final)).serverFinal)).toBe(true);
  });

  it("fails against the pgwarden server with a wrong password", () => {
    const verifier = deriveScramVerifier("correct horse", { iterations: 64 });
    const server = createScramServer(verifier, { user: "bob", mockSecret: Buffer.alloc(32) });
    const client = createScramClient("battery staple");
    const final = must(client.handleServerFirst(must(server.handleClientFirst(client.clientFirst()))));
    expect(mustFail(server.handleClientFinal(final)).code).toBe("PGW_AUTH_FAILED");
  });

  it("rejects a server signature made without the verifier", () => {
    const client = rfcClient();
    client.clientFirst();
    must(client.handleServerFirst(RFC7677.serverFirst));
    const forged = Buffer.from(RFC7677.serverFinal.slice(2), "base64");
    forged[31]! ^= 0x80;
    const error = mustFail(client.verifyServerFinal(`v=${forged.toString("base64")}`));
    expect([error.code, error.sqlstate]).toEqual(["PGW_UPSTREAM_AUTH", "08006"]);
    expect(error.message).toContain("signature");
  });

  it("surfaces an e= error from the server", () => {
    const client = rfcClient();
    client.clientFirst();
    must(client.handleServerFirst(RFC7677.serverFirst));
    const error = mustFail(client.verifyServerFinal("e=invalid-proof"));
    expect(error.code).toBe("PGW_UPSTREAM_AUTH");
    expect(error.message).toBe("upstream rejected SCRAM authentication: invalid-proof");
  });

  it("sanitizes and truncates the e= value", () => {
    const client = rfcClient();
    client.clientFirst();
    must(client.handleServerFirst(RFC7677.serverFirst));
    const error = mustFail(client.verifyServerFinal(`e=bad\u00E9${"x".repeat(300)}`));
    expect(error.message).toMatch(/: bad\?x+$/);
    expect(error.message.length).toBeLessThan(160);
  });

  it("accepts extensions after the server signature", () => {
    const client = rfcClient();
    client.clientFirst();
    must(client.handleServerFirst(RFC7677.serverFirst));
    expect(client.verifyServerFinal(`${RFC7677.serverFinal},x=1`)).toBe(true);
  });

  it.each([
    ["empty", ""],
    ["nonce of another exchange", "r=somebodyElseNONCE123,s=QUJD,i=4096"],
    ["no server nonce part", `r=${RFC7677.clientNonce},s=QUJD,i=4096`],
    ["short server nonce part", `r=${RFC7677.clientNonce}abc,s=QUJD,i=4096`],
    ["non-printable nonce", `r=${RFC7677.clientNonce}ab\u00E9defghij,s=QUJD,i=4096`],
    ["mandatory extension", `m=x,r=${RFC7677.clientNonce}SERVERNONCE,s=QUJD,i=4096`],
    ["missing salt", `r=${RFC7677.clientNonce}SERVERNONCE,i=4096`],
    ["salt not base64", `r=${RFC7677.clientNonce}SERVERNONCE,s=QUJ,i=4096`],
    ["empty salt", `r=${RFC7677.clientNonce}SERVERNONCE,s=,i=4096`],
    ["zero iterations", `r=${RFC7677.clientNonce}SERVERNONCE,s=QUJD,i=0`],
    ["signed iterations", `r=${RFC7677.clientNonce}SERVERNONCE,s=QUJD,i=+4096`],
    ["too many iterations", `r=${RFC7677.clientNonce}SERVERNONCE,s=QUJD,i=1000001`],
    ["swapped attributes", `r=${RFC7677.clientNonce}SERVERNONCE,i=4096,s=QUJD`],
  ])("rejects a server-first with %s", (_name, message) => {
    const error = mustFail(started().handleServerFirst(message));
    expect([error.code, error.sqlstate]).toEqual(["PGW_UPSTREAM_AUTH", "08006"]);
  });

  it("honours maxIterations", () => {
    const capped = (i: number) => {
      const client = createScramClient("x", { nonce: "abcdefgh", maxIterations: 10 });
      client.clientFirst();
      return client.handleServerFirst(`r=abcdefghSERVERNONCE,s=QUJD,i=${i}`);
    };
    expect(isPgwardenError(capped(10))).toBe(false);
    expect(mustFail(capped(11)).message).toContain("1..10");
  });

  it.each([
    ["a bad server-final", "v=notbase64"],
    ["neither v= nor e=", "x=1"],
    ["a short signature", `v=${Buffer.alloc(31).toString("base64")}`],
  ])("rejects %s", (_name, message) => {
    const client = rfcClient();
    client.clientFirst();
    must(client.handleServerFirst(RFC7677.serverFirst));
    expect(mustFail(client.verifyServerFinal(message)).code).toBe("PGW_UPSTREAM_AUTH");
  });

  it("enforces the message order and single use", () => {
    expect(isPgwardenError(createScramClient("x").handleServerFirst(RFC7677.serverFirst))).toBe(true);
    expect(isPgwardenError(createScramClient("x").verifyServerFinal(RFC7677.serverFinal))).toBe(true);
    const client = rfcClient();
    client.clientFirst();
    must(client.handleServerFirst(RFC7677.serverFirst));
    expect(isPgwardenError(client.handleServerFirst(RFC7677.serverFirst))).toBe(true);
    // after a failure nothing more is accepted, not even the right signature
    expect(isPgwardenError(client.verifyServerFinal(RFC7677.serverFinal))).toBe(true);
  });

  it("refuses an invalid fixed nonce", () => {
    expect(() => createScramClient("x", { nonce: "a,b" })).toThrow(RangeError);
  });
});

describe("selectScramOptions: choosing -PLUS like libpq", () => {
  const binding = { type: "tls-server-end-point", data: Buffer.alloc(32, 7) } as const;
  const both = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];

  it.each([
    ["TLS, -PLUS offered, prefer", both, binding, "prefer", { channelBinding: binding }],
    ["TLS, -PLUS offered, require", both, binding, "require", { channelBinding: binding }],
    ["TLS, -PLUS offered, disable", both, binding, "disable", { cbindFlag: "n" }],
    ["TLS, no -PLUS offered, prefer", ["SCRAM-SHA-256"], binding, "prefer", { cbindFlag: "y" }],
    ["plaintext, prefer", ["SCRAM-SHA-256"], undefined, "prefer", { cbindFlag: "n" }],
  ] as const)("%s", (_name, offered, cb, policy, expected) => {
    expect(selectScramOptions(offered, cb, policy)).toEqual(expected);
  });

  it.each([
    ["require over plaintext", ["SCRAM-SHA-256"], undefined, "not TLS"],
    [
      "require with -PLUS stripped from the offer",
      ["SCRAM-SHA-256"],
      binding,
      "did not offer SCRAM-SHA-256-PLUS",
    ],
  ] as const)("fails %s", (_name, offered, cb, message) => {
    const result = mustFail(selectScramOptions(offered, cb, "require"));
    expect(result.code).toBe("PGW_UPSTREAM_AUTH");
    expect(result.message).toContain(message);
  });

  it("fails when no known mechanism is offered", () => {
    expect(mustFail(selectScramOptions(["SCRAM-SHA-1"], undefined)).message).toContain("SCRAM-SHA-1");
  });

  it("a bound client puts gs2 header and binding data in c=", () => {
    const client = createScramClient("pencil", { nonce: RFC7677.clientNonce, channelBinding: binding });
    expect(client.clientFirst()).toBe(`p=tls-server-end-point,,n=,r=${RFC7677.clientNonce}`);
    const final = must(client.handleServerFirst(RFC7677.serverFirst));
    const c = /^c=([^,]*),/.exec(final)?.[1] ?? "";
    expect(Buffer.from(c, "base64")).toEqual(
      Buffer.concat([Buffer.from("p=tls-server-end-point,,"), binding.data]),
    );
  });
});
