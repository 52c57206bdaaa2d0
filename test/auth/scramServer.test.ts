import { createHmac } from "node:crypto";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { createScramClient } from "../../src/auth/scramClient.ts";
import {
  createScramServer,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  type ScramChannelBinding,
  type ScramServerOptions,
  scramMechanisms,
} from "../../src/auth/scramServer.ts";
import { deriveScramVerifier, type ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { must, mustFail, RFC7677 } from "./fixtures.ts";

const mockSecret = Buffer.alloc(32, 0x5a);
const rfcVerifier = deriveScramVerifier(RFC7677.password, {
  salt: RFC7677.salt,
  iterations: RFC7677.iterations,
});
const fastVerifier = (password: string): ScramVerifier =>
  deriveScramVerifier(password, { salt: Buffer.alloc(16, 9), iterations: 16 });

const options = (extra: Partial<ScramServerOptions> = {}): ScramServerOptions => ({
  user: "alice",
  mockSecret,
  ...extra,
});

/** A server already past client-first, with the pieces a hand-built client-final needs. */
const afterClientFirst = (clientFirst: string = RFC7677.clientFirst) => {
  const server = createScramServer(rfcVerifier, options({ serverNonce: RFC7677.serverNonce }));
  must(server.handleClientFirst(clientFirst));
  return server;
};

const RFC_NONCE = RFC7677.clientNonce + RFC7677.serverNonce;
const RFC_PROOF = RFC7677.clientFinal.slice(RFC7677.clientFinal.indexOf(",p=") + 3);

describe("createScramServer: RFC 7677 test vector", () => {
  it("produces the published server-first and server-final messages", () => {
    const server = createScramServer(
      rfcVerifier,
      options({ user: "user", serverNonce: RFC7677.serverNonce }),
    );
    expect(server.handleClientFirst(RFC7677.clientFirst)).toBe(RFC7677.serverFirst);
    expect(server.handleClientFinal(RFC7677.clientFinal)).toEqual({ serverFinal: RFC7677.serverFinal });
    expect(server.failureReason()).toBeUndefined();
  });
});

describe("createScramServer: exchanges with the client", () => {
  const exchange = (verifier: ScramVerifier | undefined, password: string, cbindFlag?: "n" | "y") => {
    const server = createScramServer(verifier, options());
    const client = createScramClient(password, cbindFlag === undefined ? {} : { cbindFlag });
    const clientFinal = must(client.handleServerFirst(must(server.handleClientFirst(client.clientFirst()))));
    const outcome = server.handleClientFinal(clientFinal);
    return { server, client, outcome };
  };

  it("accepts the right password and the client verifies the server", () => {
    const { client, outcome } = exchange(fastVerifier("s3cret"), "s3cret");
    expect(client.verifyServerFinal(must(outcome).serverFinal)).toBe(true);
  });

  it('accepts "y,," (client could bind, thinks the server cannot) with c=eSws', () => {
    const { client, outcome } = exchange(fastVerifier("s3cret"), "s3cret", "y");
    expect(client.verifyServerFinal(must(outcome).serverFinal)).toBe(true);
  });

  it("accepts the SASLprep-equivalent spelling of a password", () => {
    const { outcome } = exchange(fastVerifier("\u2168"), "IX");
    expect(isPgwardenError(outcome)).toBe(false);
  });

  it("rejects a wrong password with 28P01", () => {
    const { server, outcome } = exchange(fastVerifier("s3cret"), "guess");
    expect(mustFail(outcome)).toEqual({
      _tag: "PgwardenError",
      code: "PGW_AUTH_FAILED",
      sqlstate: "28P01",
      message: 'password authentication failed for user "alice"',
    });
    expect(server.failureReason()).toBe("wrong-proof");
  });

  test.prop(
    [fc.string({ unit: "grapheme", maxLength: 20 }), fc.string({ unit: "grapheme", maxLength: 20 })],
    {
      numRuns: 40,
    },
  )("succeeds exactly when the prepared passwords are equal", (stored, given) => {
    const verifier = fastVerifier(stored);
    const { outcome } = exchange(verifier, given);
    const same = fastVerifier(given).storedKey.equals(verifier.storedKey);
    expect(isPgwardenError(outcome)).toBe(!same);
  });

  it("serves a fresh 24-character base64 nonce per exchange", () => {
    const nonces = Array.from({ length: 3 }, () => {
      const server = createScramServer(rfcVerifier, options());
      const serverFirst = must(server.handleClientFirst(RFC7677.clientFirst));
      return /^r=rOprNGfwEbeRWgbNEkqO([^,]*),/.exec(serverFirst)?.[1];
    });
    for (const n of nonces) expect(n).toMatch(/^[A-Za-z0-9+/]{24}$/);
    expect(new Set(nonces).size).toBe(3);
  });
});

describe("createScramServer: unknown users", () => {
  const mockFirst = (user: string, extra: Partial<ScramServerOptions> = {}) =>
    must(createScramServer(undefined, options({ user, ...extra })).handleClientFirst(RFC7677.clientFirst));

  it("shows a stable salt derived from HMAC(mockSecret, user), 16 bytes, 4096 iterations", () => {
    const expectedSalt = createHmac("sha256", mockSecret).update("mallory").digest().subarray(0, 16);
    const first = mockFirst("mallory");
    expect(first).toMatch(
      new RegExp(`,s=${expectedSalt.toString("base64").replace(/[+/]/g, "\\$&")},i=4096$`),
    );
    const salt = (s: string) => /,s=([^,]+),/.exec(s)?.[1];
    expect(salt(mockFirst("mallory"))).toBe(salt(first));
    expect(salt(mockFirst("trudy"))).not.toBe(salt(first));
    expect(mockFirst("mallory", { mockIterations: 10_000 })).toMatch(/,i=10000$/);
  });

  it("looks like a real user's server-first", () => {
    const real = must(createScramServer(fastVerifier("x"), options()).handleClientFirst(RFC7677.clientFirst));
    const shape = (s: string) => s.replace(/,i=\d+$/, "").replace(/[A-Za-z0-9+/=]/g, "x");
    expect(shape(mockFirst("alice"))).toBe(shape(real));
  });

  it("fails at the end with the same error a wrong password gets", () => {
    const run = (verifier: ScramVerifier | undefined) => {
      const server = createScramServer(verifier, options());
      const client = createScramClient("whatever");
      const final = must(client.handleServerFirst(must(server.handleClientFirst(client.clientFirst()))));
      return { error: mustFail(server.handleClientFinal(final)), reason: server.failureReason() };
    };
    const unknown = run(undefined);
    const wrong = run(fastVerifier("other"));
    expect(unknown.error).toEqual(wrong.error);
    expect(unknown.reason).toBe("unknown-user");
    expect(wrong.reason).toBe("wrong-proof");
  });

  it("reports unknown-user for the log even when the nonce is wrong too", () => {
    const server = createScramServer(undefined, options());
    must(server.handleClientFirst(RFC7677.clientFirst));
    const error = mustFail(server.handleClientFinal(RFC7677.clientFinal));
    expect(error.code).toBe("PGW_AUTH_FAILED");
    expect(server.failureReason()).toBe("unknown-user");
  });
});

describe("createScramServer: client-first-message validation", () => {
  it.each([
    ["empty", ""],
    ["no gs2 header", "n=user,r=rOprNGfwEbeRWgbNEkqO"],
    ["bad cbind flag", "x,,n=user,r=rOprNGfwEbeRWgbNEkqO"],
    ["p= without a name", "p=,,n=user,r=rOprNGfwEbeRWgbNEkqO"],
    ["bad authzid", "n,b=x,n=user,r=rOprNGfwEbeRWgbNEkqO"],
    ["empty authzid", "n,a=,n=user,r=rOprNGfwEbeRWgbNEkqO"],
    ["mandatory extension", "n,,m=ext,n=user,r=rOprNGfwEbeRWgbNEkqO"],
    ["nonce before username", "n,,r=rOprNGfwEbeRWgbNEkqO,n=user"],
    ["missing nonce", "n,,n=user"],
    ["bad username escape", "n,,n=us=er,r=rOprNGfwEbeRWgbNEkqO"],
    ["empty nonce", "n,,n=user,r="],
    ["short nonce", "n,,n=user,r=abc"],
    ["long nonce", `n,,n=user,r=${"a".repeat(1025)}`],
    ["non-printable nonce", "n,,n=user,r=rOprNGfw\u00E9beRWgbNEkqO"],
    ["nonce with space", "n,,n=user,r=rOprNGfw beRWgbNEkqO"],
    ["attribute without =", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO,x"],
    ["empty extension", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO,x="],
    ["trailing comma", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO,"],
    ["NUL", "n,,n=us\0er,r=rOprNGfwEbeRWgbNEkqO"],
    ["too long", `n,,n=${"u".repeat(5000)},r=rOprNGfwEbeRWgbNEkqO`],
  ])("rejects %s as a protocol violation", (_name, message) => {
    const server = createScramServer(rfcVerifier, options());
    const error = mustFail(server.handleClientFirst(message));
    expect(error.code).toBe("PGW_PROTOCOL");
    expect(error.sqlstate).toBe("08P01");
    expect(server.failureReason()).toBe("malformed");
  });

  it.each([
    ["empty username (libpq)", "n,,n=,r=rOprNGfwEbeRWgbNEkqO"],
    ["escaped username", "n,,n=a=2Cb=3Dc,r=rOprNGfwEbeRWgbNEkqO"],
    ["optional extensions", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO,x=1,y=2"],
  ])("accepts %s", (_name, message) => {
    expect(isPgwardenError(createScramServer(rfcVerifier, options()).handleClientFirst(message))).toBe(false);
  });

  it("rejects channel binding (p=) clearly, since SCRAM-SHA-256-PLUS is not offered", () => {
    const server = createScramServer(rfcVerifier, options());
    const error = mustFail(server.handleClientFirst("p=tls-server-end-point,,n=,r=rOprNGfwEbeRWgbNEkqO"));
    expect(error.code).toBe("PGW_PROTOCOL");
    expect(error.message).toContain('channel binding "tls-server-end-point"');
    expect(error.message).toContain("without channel binding");
    expect(server.failureReason()).toBe("unsupported");
  });

  it("rejects an authorization identity as unsupported", () => {
    const server = createScramServer(rfcVerifier, options());
    const error = mustFail(server.handleClientFirst("n,a=admin,n=,r=rOprNGfwEbeRWgbNEkqO"));
    expect(error.code).toBe("PGW_AUTH_UNSUPPORTED");
    expect(error.sqlstate).toBe("0A000");
  });

  it("refuses an invalid fixed server nonce", () => {
    expect(() => createScramServer(rfcVerifier, options({ serverNonce: "has,comma" }))).toThrow(RangeError);
  });
});

describe("createScramServer: client-final-message validation", () => {
  const final = (parts: { c?: string; r?: string; p?: string; extra?: string }) =>
    `c=${parts.c ?? "biws"},r=${parts.r ?? RFC_NONCE}${parts.extra ?? ""},p=${parts.p ?? RFC_PROOF}`;

  it("accepts and ignores extensions before the proof", () => {
    // The proof covers client-final-without-proof, so extensions invalidate the vector's proof:
    // the message must still parse and fail only on the proof.
    const server = afterClientFirst();
    expect(mustFail(server.handleClientFinal(final({ extra: ",x=ext" }))).code).toBe("PGW_AUTH_FAILED");
    expect(server.failureReason()).toBe("wrong-proof");
  });

  it.each([
    ["empty", ""],
    ["proof first", `p=${RFC_PROOF},c=biws,r=${RFC_NONCE}`],
    ["nonce before binding", `r=${RFC_NONCE},c=biws,p=${RFC_PROOF}`],
    ["missing proof", `c=biws,r=${RFC_NONCE}`],
    ["proof not last", `c=biws,r=${RFC_NONCE},p=${RFC_PROOF},x=1`],
    ["binding not base64", final({ c: "b!ws" })],
    ["binding without padding", final({ c: "eSw" })],
    ["empty binding", final({ c: "" })],
    ["proof not base64", final({ p: "not base64" })],
    ["short proof", final({ p: Buffer.alloc(31).toString("base64") })],
    ["long proof", final({ p: Buffer.alloc(33).toString("base64") })],
    ["non-printable nonce", final({ r: `${RFC_NONCE}\u00E9` })],
    ["mandatory extension", final({ extra: ",m=1" })],
    ["too long", final({ extra: `,x=${"a".repeat(5000)}` })],
  ])("rejects %s as a protocol violation", (_name, message) => {
    const server = afterClientFirst();
    const error = mustFail(server.handleClientFinal(message));
    expect([error.code, error.sqlstate]).toEqual(["PGW_PROTOCOL", "08P01"]);
  });

  it.each([
    ["c=eSws after n,,", final({ c: "eSws" }), RFC7677.clientFirst],
    ["c=biws after y,,", final({ c: "biws" }), `y${RFC7677.clientFirst.slice(1)}`],
    ["binding data appended", final({ c: Buffer.from("n,,extra").toString("base64") }), RFC7677.clientFirst],
  ])("fails authentication on a wrong channel-binding echo (%s)", (_name, message, clientFirst) => {
    const server = afterClientFirst(clientFirst);
    expect(mustFail(server.handleClientFinal(message)).code).toBe("PGW_AUTH_FAILED");
    expect(server.failureReason()).toBe("channel-binding-mismatch");
  });

  it.each([
    ["client nonce only", RFC7677.clientNonce],
    ["server part altered", `${RFC_NONCE.slice(0, -1)}1`],
    ["extra characters", `${RFC_NONCE}x`],
  ])("fails authentication on a mismatched nonce (%s)", (_name, nonce) => {
    const server = afterClientFirst();
    const error = mustFail(server.handleClientFinal(final({ r: nonce })));
    expect([error.code, error.sqlstate]).toEqual(["PGW_AUTH_FAILED", "28P01"]);
    expect(server.failureReason()).toBe("nonce-mismatch");
  });

  it("fails on a flipped proof bit", () => {
    const proof = Buffer.from(RFC_PROOF, "base64");
    proof[0]! ^= 1;
    const server = afterClientFirst();
    expect(mustFail(server.handleClientFinal(final({ p: proof.toString("base64") }))).code).toBe(
      "PGW_AUTH_FAILED",
    );
  });

  it("cannot be replayed into another exchange", () => {
    // The client-final of a completed exchange, sent to a new exchange with a fresh server nonce.
    const server = createScramServer(rfcVerifier, options());
    must(server.handleClientFirst(RFC7677.clientFirst));
    expect(mustFail(server.handleClientFinal(RFC7677.clientFinal)).code).toBe("PGW_AUTH_FAILED");
    expect(server.failureReason()).toBe("nonce-mismatch");
  });
});

describe("createScramServer: message order", () => {
  it("rejects client-final before client-first", () => {
    const server = createScramServer(rfcVerifier, options());
    expect(mustFail(server.handleClientFinal(RFC7677.clientFinal)).code).toBe("PGW_PROTOCOL");
    expect(server.failureReason()).toBe("out-of-order");
  });

  it("rejects a second client-first", () => {
    const server = afterClientFirst();
    expect(mustFail(server.handleClientFirst(RFC7677.clientFirst)).code).toBe("PGW_PROTOCOL");
    // and the exchange is over
    expect(isPgwardenError(server.handleClientFinal(RFC7677.clientFinal))).toBe(true);
  });

  it("accepts nothing after success", () => {
    const server = afterClientFirst();
    must(server.handleClientFinal(RFC7677.clientFinal));
    expect(mustFail(server.handleClientFinal(RFC7677.clientFinal)).code).toBe("PGW_PROTOCOL");
  });

  it("accepts nothing after a failure, not even the right proof", () => {
    const server = afterClientFirst();
    mustFail(server.handleClientFinal(`c=biws,r=${RFC_NONCE},p=${Buffer.alloc(32).toString("base64")}`));
    expect(isPgwardenError(server.handleClientFinal(RFC7677.clientFinal))).toBe(true);
    expect(server.failureReason()).toBe("wrong-proof");
  });
});

describe("createScramServer: robustness", () => {
  test.prop([fc.string({ maxLength: 200 })])(
    "any client-first text yields a message or an error value",
    (text) => {
      const result = createScramServer(rfcVerifier, options()).handleClientFirst(text);
      if (isPgwardenError(result)) expect(["PGW_PROTOCOL", "PGW_AUTH_UNSUPPORTED"]).toContain(result.code);
      else expect(result).toMatch(/^r=/);
    },
  );

  test.prop([fc.string({ maxLength: 200 })])("any client-final text yields an error value", (text) => {
    const result = afterClientFirst().handleClientFinal(text);
    expect(isPgwardenError(result)).toBe(true);
  });
});

describe("createScramServer: SCRAM-SHA-256-PLUS (tls-server-end-point)", () => {
  const binding = (fill: number, length = 32): ScramChannelBinding => ({
    type: "tls-server-end-point",
    data: Buffer.alloc(length, fill),
  });
  const run = (
    serverBinding: ScramChannelBinding | undefined,
    mechanism: typeof SCRAM_SHA_256 | typeof SCRAM_SHA_256_PLUS,
    clientOptions: Parameters<typeof createScramClient>[1],
  ) => {
    const server = createScramServer(
      fastVerifier("s3cret"),
      options({ channelBinding: serverBinding, mechanism }),
    );
    const client = createScramClient("s3cret", clientOptions);
    const first = server.handleClientFirst(client.clientFirst());
    if (isPgwardenError(first)) return { server, client, outcome: first };
    const clientFinal = must(client.handleServerFirst(first));
    return { server, client, outcome: server.handleClientFinal(clientFinal) };
  };

  it("offers -PLUS first only when the leg has a binding", () => {
    expect(scramMechanisms(undefined)).toEqual(["SCRAM-SHA-256"]);
    expect(scramMechanisms(binding(1))).toEqual(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
  });

  it("accepts a client bound to the same certificate hash, and the client verifies the server", () => {
    const { client, outcome } = run(binding(1), SCRAM_SHA_256_PLUS, { channelBinding: binding(1) });
    expect(client.mechanism).toBe("SCRAM-SHA-256-PLUS");
    expect(client.clientFirst()).toMatch(/^p=tls-server-end-point,,n=,r=/);
    expect(client.verifyServerFinal(must(outcome).serverFinal)).toBe(true);
  });

  it("fails a tampered binding (another certificate's hash) with channel-binding-mismatch", () => {
    const { server, outcome } = run(binding(1), SCRAM_SHA_256_PLUS, { channelBinding: binding(2) });
    expect(mustFail(outcome)).toMatchObject({ code: "PGW_AUTH_FAILED", sqlstate: "28P01" });
    expect(server.failureReason()).toBe("channel-binding-mismatch");
  });

  it("fails a binding of a different length (SHA-384 vs SHA-256) the same way", () => {
    const { server, outcome } = run(binding(1), SCRAM_SHA_256_PLUS, { channelBinding: binding(1, 48) });
    expect(mustFail(outcome).code).toBe("PGW_AUTH_FAILED");
    expect(server.failureReason()).toBe("channel-binding-mismatch");
  });

  test.prop(
    [fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.uint8Array({ minLength: 1, maxLength: 64 })],
    {
      numRuns: 30,
    },
  )("succeeds exactly when both sides hold the same binding data", (ours, theirs) => {
    const mine: ScramChannelBinding = { type: "tls-server-end-point", data: Buffer.from(ours) };
    const sent: ScramChannelBinding = { type: "tls-server-end-point", data: Buffer.from(theirs) };
    const { outcome } = run(mine, SCRAM_SHA_256_PLUS, { channelBinding: sent });
    expect(isPgwardenError(outcome)).toBe(!mine.data.equals(sent.data));
  });

  it('treats "y" after a -PLUS offer as a downgrade (RFC 5802 §6)', () => {
    const { server, outcome } = run(binding(1), SCRAM_SHA_256, { cbindFlag: "y" });
    expect(mustFail(outcome)).toMatchObject({ code: "PGW_PROTOCOL", sqlstate: "08P01" });
    expect(mustFail(outcome).message).toContain("channel binding negotiation error");
    expect(server.failureReason()).toBe("channel-binding-downgrade");
  });

  it('accepts "n" on a TLS leg: the client cannot bind, which is its choice', () => {
    const { outcome } = run(binding(1), SCRAM_SHA_256, {});
    expect(isPgwardenError(outcome)).toBe(false);
  });

  it("refuses -PLUS selected without channel-binding data", () => {
    const { server, outcome } = run(binding(1), SCRAM_SHA_256_PLUS, {});
    expect(mustFail(outcome).message).toContain("does not include channel binding data");
    expect(server.failureReason()).toBe("malformed");
  });

  it("refuses binding data sent with plain SCRAM-SHA-256", () => {
    const { server, outcome } = run(binding(1), SCRAM_SHA_256, { channelBinding: binding(1) });
    expect(mustFail(outcome).code).toBe("PGW_PROTOCOL");
    expect(server.failureReason()).toBe("unsupported");
  });

  it("refuses a channel-binding type other than tls-server-end-point", () => {
    const server = createScramServer(
      rfcVerifier,
      options({ channelBinding: binding(1), mechanism: SCRAM_SHA_256_PLUS }),
    );
    const error = mustFail(server.handleClientFirst("p=tls-unique,,n=,r=rOprNGfwEbeRWgbNEkqO"));
    expect(error.message).toContain('unsupported SCRAM channel-binding type "tls-unique"');
  });

  it("cannot run -PLUS without a binding (a plaintext leg)", () => {
    expect(() => createScramServer(rfcVerifier, options({ mechanism: SCRAM_SHA_256_PLUS }))).toThrow(
      RangeError,
    );
  });

  it("an unknown user over -PLUS fails like a wrong password", () => {
    const server = createScramServer(
      undefined,
      options({ channelBinding: binding(1), mechanism: SCRAM_SHA_256_PLUS }),
    );
    const client = createScramClient("x", { channelBinding: binding(1) });
    const final = must(client.handleServerFirst(must(server.handleClientFirst(client.clientFirst()))));
    expect(mustFail(server.handleClientFinal(final)).code).toBe("PGW_AUTH_FAILED");
    expect(server.failureReason()).toBe("unknown-user");
  });
});
