import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { makePki, type Pki } from "../audit-sinks/support/pki.ts";
import { eventually, expectAllValid, readRecords, startAuditedProxy, verifyCli } from "./support.ts";

let dir: string;
let pki: Pki;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgw-auditwire-policy-"));
  pki = await makePki(dir);
}, 60_000);
afterAll(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** A required syslog sink at a port nobody listens on: down from the first delivery. */
const deadSyslog = async () => ({
  host: "127.0.0.1",
  port: await freePort(),
  servername: "localhost",
  ca: pki.ca,
  cert: pki.clientCert,
  key: pki.clientKey,
  required: true,
  connectTimeoutMs: 500,
  queue: { backoffMinMs: 50, backoffMaxMs: 200, attemptTimeoutMs: 1000 },
});

describe("statement text per audit.statements", () => {
  it("normalized replaces literals with the real parser; fingerprint keeps only the fingerprint", async () => {
    for (const mode of ["normalized", "fingerprint", "none"] as const) {
      const proxy = await startAuditedProxy({ statements: mode }, undefined, "inline");
      const c = new pg.Client(proxy.connection());
      await c.connect();
      // A number no hash, port or time stamp in the records will contain by chance (4242 did, now and then).
      await c.query("SELECT 'hunter2-literal' AS a, 987654321 AS b");
      await c.query({ text: "SELECT $1::text AS c", values: ["param-value-xyz"] });
      await c.end();
      await proxy.close();
      const records = await readRecords(proxy.dir);
      expectAllValid(records);
      const text = JSON.stringify(records);
      expect(text).not.toContain("hunter2-literal");
      expect(text).not.toContain("987654321");
      expect(text).not.toContain("param-value-xyz");
      const q = records.find((r) => r.kind === "statement" && r.message === "Query")!;
      expect(q.textMode).toBe(mode);
      if (mode === "normalized") {
        expect(q.text).toBe("SELECT $1 AS a, $2 AS b");
        expect(q.parser).toMatch(/^libpg-query, PostgreSQL 18\.\d+ grammar$/);
      } else if (mode === "fingerprint") {
        expect(q.text).toBeUndefined();
        expect(q.fingerprint).toMatch(/^[0-9a-f]{16}$/);
      } else {
        expect(q.text).toBeUndefined();
        expect(q.fingerprint).toBeUndefined();
      }
    }
  }, 60_000);
});

describe("audit.onFailure", () => {
  it("alert keeps serving while a required sink is down, and logs and records the failure", async () => {
    const proxy = await startAuditedProxy({
      onFailure: "alert",
      drainTimeoutMs: 500,
      sinks: { syslog: await deadSyslog() },
    });
    const c = new pg.Client(proxy.connection());
    await c.connect();
    await c.query("SELECT 1");
    await eventually("the sink to be down", () => proxy.audit.pipeline.status().sinks[0]!.healthy === false);
    expect(proxy.audit.pipeline.status().blocked).toBeUndefined();
    expect((await c.query("SELECT 2 AS two")).rows[0].two).toBe(2);
    const more = new pg.Client(proxy.connection());
    await more.connect();
    await more.end();
    await c.end();
    await proxy.close();
    const records = await readRecords(proxy.dir);
    expectAllValid(records);
    expect(records.some((r) => r.kind === "sink.failure" && r.sink === "syslog")).toBe(true);
    expect(proxy.logs.some((l) => l.includes("audit sink down"))).toBe(true);
    expect(verifyCli(proxy.dir, proxy.keys).code).toBe(0);
  }, 60_000);

  it("block ends a session with FATAL 53000 for an extended-protocol statement, which never reaches PostgreSQL", async () => {
    const proxy = await startAuditedProxy({
      onFailure: "block",
      drainTimeoutMs: 500,
      sinks: { syslog: await deadSyslog() },
    });
    const c = new pg.Client(proxy.connection());
    await c.connect();
    await c.query("SELECT 1");
    await eventually("blocked", () => proxy.audit.pipeline.status().blocked !== undefined);
    c.on("error", () => {});
    const e = (await c
      .query({ text: "SELECT $1::text AS never_ran", values: ["x"] })
      .catch((x: unknown) => x)) as pg.DatabaseError;
    expect(e.code).toBe("53000");
    expect(e.severity).toBe("FATAL");
    await proxy.close();
    const records = await readRecords(proxy.dir);
    const refused = records.filter((r) => r.kind === "statement" && r.sqlstate === "53000");
    expect(refused).toMatchObject([{ message: "Parse", outcome: "error" }]);
    // Nothing after the refusal went upstream: no statement record with outcome ok follows it.
    const after = records.slice(records.indexOf(refused[0]!) + 1);
    expect(after.some((r) => r.kind === "statement" && r.outcome === "ok")).toBe(false);
  }, 60_000);
});
