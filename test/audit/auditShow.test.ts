import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { auditClock } from "../../src/audit/timestamp.ts";
import { cli, makeKeys, openWriter } from "./support/auditLog.ts";

let dir: string;

beforeAll(async () => {
  const keys = await makeKeys("show");
  dir = await mkdtemp(join(tmpdir(), "pgw-audit-show-"));
  const w = await openWriter(dir, keys);
  const ts = () => auditClock.now();
  const a = { session: "b1-c1", source: "127.0.0.1:40000" };
  const b = { session: "b1-c2", source: "127.0.0.1:40001" };
  w.append({ ...a, ts: ts(), kind: "connection.accepted", transport: "tcp" });
  w.append({ ...b, ts: ts(), kind: "connection.accepted", transport: "tcp" });
  w.append({
    ...b,
    ts: ts(),
    kind: "auth.failure",
    method: "scram-sha-256",
    user: "mallory",
    reason: "wrong password",
  });
  w.append({
    ...a,
    ts: ts(),
    identity: "alice",
    kind: "auth.success",
    method: "scram-sha-256",
    user: "alice",
  });
  w.append({
    ...a,
    ts: ts(),
    identity: "alice",
    database: "app",
    role: "app_rw",
    kind: "statement",
    message: "Query",
    textMode: "normalized",
    text: "SELECT * FROM t WHERE id = $1",
    commandTag: "SELECT 1",
    rows: 1,
    outcome: "ok",
  });
  w.append({
    ...a,
    ts: ts(),
    identity: "alice",
    kind: "connection.closed",
    reason: "client terminated",
    durationMs: 3,
    clientBytesIn: 10,
    clientBytesOut: 20,
  });
  await w.close();
});

describe("pgwarden audit show", () => {
  it("prints each session's timeline: who, from where, what, outcome", () => {
    const r = cli(["audit", "show", dir]);
    expect(r.code).toBe(0);
    expect(r.out).toContain(
      "session pgw-test/b1-c1: alice from 127.0.0.1:40000 to database app as role app_rw",
    );
    expect(r.out).toContain("Query: SELECT * FROM t WHERE id = $1 → SELECT 1, 1 rows");
    expect(r.out).toContain("AUTHENTICATION FAILED: scram-sha-256 as mallory: wrong password");
    expect(r.out.indexOf("b1-c1")).toBeLessThan(r.out.indexOf("b1-c2"));
  });

  it("filters by session and by identity", () => {
    const s = cli(["audit", "show", dir, "--session", "b1-c2"]);
    expect(s.out).toContain("mallory");
    expect(s.out).not.toContain("alice");
    const i = cli(["audit", "show", dir, "--identity", "alice"]);
    expect(i.out).toContain("b1-c1");
    expect(i.out).not.toContain("b1-c2");
    expect(cli(["audit", "show", dir, "--identity", "nobody"]).out).toContain("no matching session");
    expect(cli(["audit", "show"]).code).toBe(3);
  });
});
