import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/**
 * The admin console as an operator meets it, with hostile clients about: a console session is a
 * session of its identity and source like any other (AC-10 caps apply), and a name a client chose
 * (application_name) reaches the operator's terminal as PostgreSQL shows it — printable ASCII,
 * `\xNN` for every other byte, at most 63 bytes — never as raw escape sequences.
 */

let proxy: TestProxy;
beforeAll(async () => {
  const info = postgresInfo();
  proxy = await startProxy({
    upstream: { user: info.appRole, password: info.rolePassword },
    auth: { method: "trust" },
    admin: { identities: ["ops"] },
    access: { grants: [{ identity: "app", databases: ["*"], role: info.appRole }] },
    pool: { mode: "transaction", size: 2 },
    sessions: { maxPerIdentity: 1, idleTimeoutMs: 0 },
    log: { level: "warn" },
  });
});
afterAll(() => proxy?.close());

const consoleClient = () =>
  new pg.Client({ host: "127.0.0.1", port: proxy.port, user: "ops", database: "pgwarden" });

describe("console sessions and the session caps", () => {
  it("a second console session of an identity capped at one gets 53300", async () => {
    const first = consoleClient();
    await first.connect();
    const second = consoleClient();
    second.on("error", () => {});
    const refused = await second.connect().then(
      () => "connected",
      (e: { code?: string }) => e.code,
    );
    await second.end().catch(() => {});
    expect(refused).toBe("53300");
    await first.end();
    // The slot comes back with the session.
    await new Promise((r) => setTimeout(r, 100));
    const again = consoleClient();
    await again.connect();
    expect((await again.query("SHOW VERSION")).rows.length).toBe(1);
    await again.end();
  });
});

describe("application_name in SHOW CLIENTS", () => {
  it("is shown as PostgreSQL shows it: escaped and cut at 63 bytes", async () => {
    const name = `\x1b[2J\x1b]0;owned\x07${"é".repeat(10)}${"x".repeat(80)}`;
    const app = new pg.Client({
      host: "127.0.0.1",
      port: proxy.port,
      user: "app",
      database: postgresInfo().appDatabase,
      application_name: name,
    });
    await app.connect();
    try {
      const direct = (
        await app.query("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
      ).rows[0].application_name as string;
      const admin = consoleClient();
      await admin.connect();
      const rows = (await admin.query("SHOW CLIENTS")).rows as { user: string; application_name: string }[];
      await admin.end();
      const shown = rows.find((r) => r.user === "app")!.application_name;
      expect(shown).not.toMatch(/[\x00-\x1f\x7f-\uffff]/);
      expect(shown.startsWith("\\x1b[2J\\x1b]0;owned\\x07\\xc3\\xa9")).toBe(true);
      expect(Buffer.byteLength(shown)).toBeLessThanOrEqual(63);
      // PostgreSQL's own view of the same connection, where it cleans the name the same way.
      expect(shown).toBe(direct);
    } finally {
      await app.end();
    }
  });
});
