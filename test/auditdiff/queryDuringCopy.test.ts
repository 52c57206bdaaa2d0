import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCopyData } from "../../src/protocol/frontend.ts";
import type { AuditedProxy } from "../auditwire/support.ts";
import { errorOf, msg, type PgSession, type Reply } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, viaProxy } from "./support.ts";

/**
 * A Query sent while COPY FROM STDIN is still reading data (no CopyDone): PostgreSQL fails the
 * COPY with ERROR 08P01, then ends the session with FATAL 08P01 (protocol synchronization lost),
 * with no ReadyForQuery. The client was told its COPY failed with 08P01; the trail must record that
 * COPY once, as failed with 08P01, and nothing for the Query PostgreSQL swallowed.
 */

const view = (r: readonly Reply[]) =>
  r.map((m) => (m.type === "E" ? `E${errorOf(m).code}` : m.type)).join(" ");

const run = async (s: PgSession): Promise<string[]> => {
  const out: string[] = [];
  try {
    out.push(view(await s.exchange([msg.query("CREATE TEMP TABLE qdc (a int)")])));
    out.push(
      view(
        await s.exchange([
          msg.query("COPY qdc FROM STDIN -- qdc-marker"),
          encodeCopyData(Buffer.from("1\n")),
          msg.query("SELECT 'qdc-swallowed'"),
        ]),
      ),
    );
    await s.wire.waitClosed(3000);
    out.push("closed");
  } finally {
    s.terminate();
  }
  return out;
};

describe("a Query sent in the middle of COPY FROM STDIN", () => {
  let proxy: AuditedProxy;
  let records: Rec[];
  let directView: string[] = [];
  let proxiedView: string[] = [];

  beforeAll(async () => {
    proxy = await auditedProxy({ statements: "full" });
    directView = await run(await direct());
    proxiedView = await run(await viaProxy(proxy));
    records = await closeAndRead(proxy);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("PostgreSQL fails the COPY with 08P01 and closes; the proxy passes that on", () => {
    expect(directView).toEqual(["C Z", "G E08P01 E08P01", "closed"]);
    expect(proxiedView).toEqual(directView);
  });

  it("the failed COPY is recorded once with 08P01, the swallowed Query not as run", () => {
    const withText = (m: string) =>
      records.filter((r) => r.kind === "statement" && String(r.text ?? "").includes(m));
    expect(brief(withText("qdc-swallowed").filter((r) => r.outcome === "ok"))).toEqual([]);
    expect(brief(withText("qdc-marker"))).toEqual(["Copy:error:08P01:-"]);
  });
});
