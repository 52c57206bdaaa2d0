import { describe, expect, it } from "vitest";
import { encodeCopyData, encodeCopyDone, encodeCopyFail } from "../../src/protocol/frontend.ts";
import { sleep } from "../support/hostile.ts";
import { pooledClients } from "../support/pooledClients.ts";

/**
 * Transaction mode, one server connection: PostgreSQL ignores CopyData, CopyDone and CopyFail
 * outside COPY and owes no reply for them, so no ReadyForQuery ever comes to give the connection
 * back. An idle client that sends one 5-byte message must not keep the pool's only connection.
 */

describe("stray COPY messages between transactions", () => {
  const session = pooledClients(
    "hstray",
    { pool: { mode: "transaction", size: 1, queryWaitTimeoutMs: 1500 } },
    "perTest",
  );

  const cases: [string, Buffer][] = [
    ["CopyData", encodeCopyData(Buffer.from("x"))],
    ["CopyDone", encodeCopyDone()],
    ["CopyFail", encodeCopyFail("nothing to fail")],
  ];
  for (const [what, bytes] of cases) {
    it(`an idle client's lone ${what} does not keep the only server connection from others`, async () => {
      const hostile = await session();
      const other = await session();
      expect(await hostile.value("SELECT 'warm'")).toBe("warm");
      hostile.send(bytes);
      await sleep(200);
      // A correct pooler serves this at once: nothing is owed to the hostile client.
      const r = await other.query("SELECT 'served'", 5000);
      expect(r.error, `the other client waited: ${r.error?.code} ${r.error?.message}`).toBeUndefined();
      expect(r.rows).toEqual([["served"]]);
      // And the hostile client itself still works.
      expect(await hostile.value("SELECT 'still fine'")).toBe("still fine");
    });
  }
});
