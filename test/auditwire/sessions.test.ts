import pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type AuditedProxy,
  expectAllValid,
  PASSWORD,
  readRecords,
  startAuditedProxy,
  verifyCli,
} from "./support.ts";

/** The records of one session, transitions left out: what an auditor reads first. */
const story = (records: Record<string, unknown>[], session: string) =>
  records.filter((r) => r.session === session && r.kind !== "transition");

/** Transitions of one machine of a connection, standalone or folded into statements, in order. */
const transitionsOf = (records: Record<string, unknown>[], conn: string, machine: "client" | "server") =>
  records
    .flatMap((r) =>
      r.kind === "transition" && r.session === conn
        ? [r]
        : r.kind === "statement" && (machine === "client" ? r.session === conn : r.server === conn)
          ? ((r.transitions as Record<string, unknown>[] | undefined) ?? [])
          : [],
    )
    .filter((t) => t.machine === machine);

const sessionOf = (records: Record<string, unknown>[], pred: (r: Record<string, unknown>) => boolean) => {
  const r = records.find(pred);
  if (r === undefined) throw new Error("no such record");
  return String(r.session);
};

describe("sessions through the proxy leave exactly their events, and the log verifies", () => {
  let proxy: AuditedProxy;
  let records: Record<string, unknown>[];

  beforeAll(async () => {
    proxy = await startAuditedProxy({ statements: "full" }, [
      { identity: "postgres", databases: ["postgres"] },
    ]);
    // simple
    const simple = new pg.Client(proxy.connection());
    await simple.connect();
    await simple.query("SELECT 'simple-marker' AS m, 1 + 1 AS two");
    await simple.query("CREATE TEMP TABLE t (a int, b text)");
    await simple.end();
    // extended
    const ext = new pg.Client(proxy.connection());
    await ext.connect();
    await ext.query({ text: "SELECT $1::int + 40 AS v, 'extended-marker'", values: [2] });
    await expect(ext.query({ text: "SELECT 1/$1::int", values: [0] })).rejects.toThrow(/division by zero/);
    await ext.end();
    // COPY in and out
    const sql = postgres({ ...proxy.connection(), max: 1, onnotice: () => {} });
    await sql`CREATE TEMP TABLE c (a int)`;
    const w = await sql`COPY c FROM STDIN`.writable();
    await new Promise<void>((res, rej) => {
      w.on("error", rej);
      w.end("1\n2\n3\n", () => res());
    });
    await new Promise((r) => setTimeout(r, 100));
    const counted = await sql`SELECT count(*)::int AS n FROM c`;
    expect(counted[0]?.n).toBe(3);
    // cancel
    const q = sql`SELECT pg_sleep(5), 'cancel-marker'`;
    const cancelled = q.then(
      () => "finished",
      (e: Error & { code?: string }) => e.code,
    );
    setTimeout(() => q.cancel(), 300);
    expect(await cancelled).toBe("57014");
    await sql.end();
    // failed authentication
    const bad = new pg.Client({ ...proxy.connection(), password: "wrong-password-xyz" });
    await expect(bad.connect()).rejects.toThrow(/password authentication failed/);
    // denied by the grants
    const denied = new pg.Client({ ...proxy.connection(), database: "template1" });
    await expect(denied.connect()).rejects.toThrow(/not granted/);
    await proxy.close();
    records = await readRecords(proxy.dir);
  }, 60_000);

  afterAll(async () => {
    await proxy?.close().catch(() => {});
  });

  it("every record validates against the AuditRecord schema, seq is continuous", () => {
    expectAllValid(records);
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
    expect(records[0]!.kind).toBe("audit.started");
    expect(records.at(-1)!.kind).toBe("checkpoint");
    expect(records.at(-1)!.reason).toBe("shutdown");
    for (const r of records) {
      expect(r.ts).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
      expect(r.instance).toBe("pgw-wire");
    }
  });

  it("a simple-query session: accepted, allowed, authenticated, two statements, closed", () => {
    const s = sessionOf(records, (r) => typeof r.text === "string" && r.text.includes("simple-marker"));
    const st = story(records, s);
    expect(st.map((r) => r.kind)).toEqual([
      "connection.accepted",
      // Access rules decide before credentials are read; grants once the identity is proven.
      "access.decision",
      "auth.attempt",
      "auth.success",
      "access.decision",
      // The session's server connection comes from its pool and goes back when the client leaves.
      "pool.checkout",
      "statement",
      "statement",
      "pool.release",
      "connection.closed",
    ]);
    const [acc, rule, , ok, dec, checkout, q1, q2, release, closed] = st;
    expect(checkout).toMatchObject({ mode: "session" });
    expect(release).toMatchObject({ reason: "clientClosed" });
    expect(rule).toMatchObject({ decision: "allow", rule: "access.rules: default" });
    expect(acc!.source).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(dec).toMatchObject({
      decision: "allow",
      rule: "access.grants[0]",
      database: "postgres",
      role: "pgw_app",
    });
    expect(ok).toMatchObject({ method: "scram-sha-256", user: "postgres" });
    expect(q1).toMatchObject({
      message: "Query",
      commandTag: "SELECT 1",
      rows: 1,
      outcome: "ok",
      identity: "postgres",
    });
    expect(q2).toMatchObject({
      message: "Query",
      commandTag: "CREATE TABLE",
      outcome: "ok",
      database: "postgres",
      role: "pgw_app",
    });
    expect(closed!.clientBytesIn as number).toBeGreaterThan(0);
    expect(closed!.clientBytesOut as number).toBeGreaterThan(0);
    expect(closed!.serverBytesIn as number).toBeGreaterThan(0);
    // Every transition of the client machine is there, standalone or folded into its statement,
    // in order from startup to closed: each starts where the one before ended.
    const tr = transitionsOf(records, s, "client");
    expect(tr[0]).toMatchObject({ machine: "client", from: "startup.fresh" });
    expect(tr.at(-1)).toMatchObject({ to: "closed" });
    for (let i = 1; i < tr.length; i++) expect(tr[i]!.from).toBe(tr[i - 1]!.to);
    // The statements carry their own (the first also those since the grant): a Query takes the client and the server machine to busy and back.
    for (const q of [q1, q2]) {
      const t = q!.transitions as Record<string, unknown>[];
      expect(t.slice(-4).map((x) => `${x.machine}:${x.from}>${x.to}`)).toEqual([
        "client:ready.idle>busy.simpleQuery",
        "server:idle>active",
        "server:active>idle",
        "client:busy.simpleQuery>ready.idle",
      ]);
      expect(q!.server).toMatch(/^s\d+$/);
    }
    // And the server connection's machine, from its first state to its last, chains the same way.
    const srv = transitionsOf(records, String(q1!.server), "server");
    for (let i = 1; i < srv.length; i++) expect(srv[i]!.from).toBe(srv[i - 1]!.to);
  });

  it("an extended-protocol session: Parse, Bind, Execute with parameter formats; an error carries SQLSTATE", () => {
    const s = sessionOf(records, (r) => typeof r.text === "string" && r.text.includes("extended-marker"));
    const st = story(records, s).filter((r) => r.kind === "statement");
    const kinds = st.map((r) => r.message);
    expect(kinds).toEqual(["Parse", "Bind", "Execute", "Parse", "Bind", "Execute"]);
    expect(st[1]).toMatchObject({ paramCount: 1, paramFormats: ["text"] });
    expect(st[2]).toMatchObject({ commandTag: "SELECT 1", rows: 1, outcome: "ok" });
    expect(st[5]).toMatchObject({ outcome: "error", sqlstate: "22012" });
  });

  it("COPY and a cancelled statement", () => {
    const copy = records.find((r) => r.kind === "statement" && r.message === "Copy");
    expect(copy).toMatchObject({ commandTag: "COPY 3", rows: 3, outcome: "ok" });
    const cancelled = records.filter((r) => r.kind === "statement" && r.outcome === "cancelled");
    expect(cancelled.length).toBe(1);
    expect(cancelled[0]).toMatchObject({ message: "Execute", sqlstate: "57014" });
    // The Parse of that statement carries its text.
    const session = cancelled[0]!.session;
    const parse = records.find(
      (r) => r.session === session && r.message === "Parse" && String(r.text).includes("cancel-marker"),
    );
    expect(parse).toBeDefined();
  });

  it("failed authentication and a denied database are recorded with their reasons", () => {
    const failure = records.find((r) => r.kind === "auth.failure");
    expect(failure).toMatchObject({ method: "scram-sha-256", user: "postgres", sqlstate: "28P01" });
    const s = String(failure!.session);
    expect(story(records, s).map((r) => r.kind)).toEqual([
      "connection.accepted",
      "access.decision",
      "auth.attempt",
      "auth.failure",
      "connection.closed",
    ]);
    const deny = records.find((r) => r.kind === "access.decision" && r.decision === "deny");
    expect(deny).toMatchObject({ rule: "access.grants[0]", database: "template1" });
    expect(String(deny!.reason)).toMatch(/not granted/);
    expect(story(records, String(deny!.session)).map((r) => r.kind)).toEqual([
      "connection.accepted",
      "access.decision",
      "auth.attempt",
      "auth.success",
      "access.decision",
      "connection.closed",
    ]);
  });

  it("pgwarden audit verify says intact", () => {
    const v = verifyCli(proxy.dir, proxy.keys);
    expect(v.stdout).toMatch(/INTACT/);
    expect(v.code).toBe(0);
  });

  it("no secret appears in any record or log line", async () => {
    const { readFile } = await import("node:fs/promises");
    const everything = [...records.map((r) => JSON.stringify(r)), ...proxy.logs].join("\n");
    const hmacKey = (await readFile(proxy.keys.hmacKeyFile, "utf8")).trim();
    const signing = (await readFile(proxy.keys.signingKeyFile, "utf8")).split("\n").slice(1, -2).join("");
    for (const secret of [PASSWORD, "wrong-password-xyz", hmacKey, signing.slice(0, 40)])
      expect(everything.includes(secret), "a secret leaked").toBe(false);
    // SCRAM client-final proofs (p=…) and verifiers never appear.
    expect(everything).not.toMatch(/p=[A-Za-z0-9+/]{40,}={0,2}/);
    expect(everything).not.toMatch(/SCRAM-SHA-256\$/);
  });
});
