import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScramClient } from "../../src/auth/scramClient.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { encodeQuery, encodeSASLInitialResponse, encodeSASLResponse } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { authMessages } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, TEST_PASSWORD, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * A client that sends its first Query in the same write as its last authentication message (the
 * SASLResponse, or with trust the startup packet itself). The protocol allows it: PostgreSQL
 * reads the buffered Query after ReadyForQuery and answers it (the control case below runs the
 * same bytes against PostgreSQL). pgwarden's authentication stream takes the Query for a message
 * type that does not belong to the exchange, notes the violation, stops reading — and the
 * hand-over to the session (pooled or the admin console) then ignores that failure: the Query is
 * dropped without an error, the client waits for an answer that never comes, and the session
 * carries on one request behind. Fixed means: the Query is answered (as PostgreSQL does), or at
 * least refused with an error that ends the connection; never silently lost.
 */

const readies = (w: WireClient) => w.messages().filter((m) => m.type === "Z").length;

/** The first column of each DataRow received, as text. */
const values = (w: WireClient) =>
  w
    .messages()
    .filter((m) => m.type === "D")
    .map((m) => m.msg.toString("utf8", 11, 11 + m.msg.readInt32BE(7)));

/** SCRAM up to the SASLResponse, which goes out in one write with `extra`. */
const scramThen = async (w: WireClient, user: string, password: string, database: string, extra: Buffer) => {
  w.send(
    encodeStartup(
      new Map([
        ["user", user],
        ["database", database],
      ]),
    ),
  );
  await w.until((x) => authMessages(x, 10).length > 0, 5000, "AuthenticationSASL");
  const scram = createScramClient(password);
  w.send(encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(scram.clientFirst())));
  await w.until((x) => authMessages(x, 11).length > 0, 5000, "SASLContinue");
  const final = scram.handleServerFirst(authMessages(w, 11)[0]!.toString("utf8", 9));
  if (isPgwardenError(final)) throw new Error(final.message);
  w.send(Buffer.concat([encodeSASLResponse(Buffer.from(final)), extra]));
};

/** Answered (the Query's ReadyForQuery after the login's), or refused and closed; else "dropped". */
const outcome = async (w: WireClient, answer: (w: WireClient) => boolean): Promise<string> => {
  try {
    await w.until((x) => answer(x) || (x.closed && x.errorCode() !== undefined), 2000, "the Query's answer");
  } catch {
    return `dropped (received ${w
      .messages()
      .map((m) => m.type)
      .join("")})`;
  }
  return answer(w) ? "answered" : `refused ${w.errorCode()}`;
};

const okOutcome = expect.stringMatching(/^(answered|refused 08P01)$/);

describe("a Query in the same write as the last authentication message", () => {
  it("control: PostgreSQL answers it", async () => {
    const pg = postgresInfo();
    const w = await WireClient.open(pg.port, pg.host);
    try {
      await scramThen(w, pg.appRole, pg.rolePassword, pg.appDatabase, encodeQuery("SELECT 1"));
      expect(await outcome(w, (x) => readies(x) === 2 && values(x).includes("1"))).toBe("answered");
    } finally {
      w.close();
    }
  });

  for (const mode of ["session", "transaction"] as const) {
    describe(`through pgwarden (${mode} mode)`, () => {
      let proxy: TestProxy;
      beforeAll(async () => {
        proxy = await startProxy({
          pool: { mode, size: 2 },
          admin: { identities: ["postgres"] },
          log: { level: "warn" },
        });
      });
      afterAll(() => proxy?.close());

      it("after the SASLResponse: the upstream session answers it, or refuses it, never drops it", async () => {
        const w = await WireClient.open(proxy.port);
        try {
          await scramThen(w, "postgres", TEST_PASSWORD, "postgres", encodeQuery("SELECT 1"));
          expect(await outcome(w, (x) => readies(x) === 2 && values(x).includes("1"))).toEqual(okOutcome);
        } finally {
          w.close();
        }
      });

      it("after the SASLResponse: the admin console answers it, or refuses it, never drops it", async () => {
        const w = await WireClient.open(proxy.port);
        try {
          await scramThen(w, "postgres", TEST_PASSWORD, "pgwarden", encodeQuery("SHOW VERSION"));
          expect(await outcome(w, (x) => readies(x) === 2 && values(x).length === 1)).toEqual(okOutcome);
        } finally {
          w.close();
        }
      });
    });
  }

  describe("with trust, in the same write as the startup packet", () => {
    let proxy: TestProxy;
    beforeAll(async () => {
      proxy = await startProxy({
        auth: { method: "trust" },
        pool: { mode: "session", size: 2 },
        admin: { identities: ["ops"] },
        log: { level: "warn" },
      });
    });
    afterAll(() => proxy?.close());

    for (const [what, database, query, answered] of [
      ["an upstream session", "postgres", "SELECT 1", (x: WireClient) => values(x).includes("1")],
      ["the admin console", "pgwarden", "SHOW VERSION", (x: WireClient) => values(x).length === 1],
    ] as const) {
      it(`${what} answers it, or refuses it, never drops it`, async () => {
        const w = await WireClient.open(proxy.port);
        try {
          w.send(
            encodeStartup(
              new Map([
                ["user", "ops"],
                ["database", database],
              ]),
            ),
            encodeQuery(query),
          );
          expect(await outcome(w, (x) => readies(x) === 2 && answered(x))).toEqual(okOutcome);
        } finally {
          w.close();
        }
      });
    }
  });
});
