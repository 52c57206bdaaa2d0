import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScramClient } from "../../src/auth/scramClient.ts";
import { encodeSASLInitialResponse } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { authMessages, boundary, iterationsOf, verifier } from "../support/hostile.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 4: unknown users always saw `i=4096` in the SCRAM server-first-message, while users
 * added with `--iterations 10000` saw `i=10000`: the count told who exists.
 */

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy(
    { ...boundary(), auth: { method: "scram-sha-256" } },
    new Map([
      ["alice", verifier("alice-password", 10_000)],
      ["bob", verifier("bob-password", 10_000)],
    ]),
  );
});
afterAll(() => proxy.close());

/** The iteration count pgwarden's server-first-message shows this user name. */
const shownIterations = async (user: string): Promise<number> => {
  const c = await WireClient.open(proxy.port);
  try {
    c.send(encodeStartup(new Map([["user", user]])));
    await c.until((x) => authMessages(x, 10).length > 0, 5000, "AuthenticationSASL");
    c.send(encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(createScramClient("guess").clientFirst())));
    await c.until((x) => authMessages(x, 11).length > 0, 5000, "AuthenticationSASLContinue");
    return iterationsOf(authMessages(c, 11)[0]!);
  } finally {
    c.close();
  }
};

describe("user enumeration through the SCRAM iteration count", () => {
  it("shows an unknown user the same i= as the users file's real verifiers", async () => {
    expect(await shownIterations("alice")).toBe(10_000);
    expect(await shownIterations("bob")).toBe(10_000);
    for (const unknown of ["nobody", "mallory", "postgres"])
      expect(await shownIterations(unknown)).toBe(10_000);
  });
});
