import { describe, expect, it } from "vitest";
import { isAuditError } from "../../src/audit/AuditError.ts";
import {
  AUDIT_EVENT_KINDS,
  type AuditEvent,
  encodeEvent,
  validateEvent,
} from "../../src/audit/AuditEvent.ts";

const ts = "2026-01-02T03:04:05.000006Z";
const who = {
  ts,
  session: "b1-c7",
  identity: "alice",
  source: "127.0.0.1:50000",
  database: "app",
  role: "app_rw",
};
const h = "ab".repeat(32);
const k = "cd".repeat(16);

/** One example of every kind, written out by hand. */
const samples: AuditEvent[] = [
  { ...who, kind: "connection.accepted", transport: "tcp", local: "127.0.0.1:6432" },
  {
    ...who,
    kind: "connection.closed",
    reason: "client terminated",
    durationMs: 12.5,
    clientBytesIn: 300,
    clientBytesOut: 900,
  },
  {
    ...who,
    kind: "tls.established",
    leg: "client",
    version: "TLSv1.3",
    cipher: "TLS_AES_256_GCM_SHA384",
    peerFingerprint: h,
  },
  { ...who, kind: "auth.attempt", method: "scram-sha-256", user: "alice" },
  { ...who, kind: "auth.success", method: "scram-sha-256", user: "alice" },
  {
    ...who,
    kind: "auth.failure",
    method: "scram-sha-256",
    user: "alice",
    reason: "wrong password",
    sqlstate: "28P01",
  },
  { ...who, kind: "access.decision", decision: "deny", rule: "tenants/2", reason: "database not allowed" },
  {
    ...who,
    kind: "transition",
    machine: "server",
    from: "ready.idle",
    to: "busy.copy.in",
    cause: "CopyInResponse",
  },
  { ...who, kind: "pool.checkout", pool: "app/app_rw", server: "s3", mode: "transaction", waitMs: 0.2 },
  { ...who, kind: "pool.release", pool: "app/app_rw", server: "s3", reason: "idle", heldMs: 4 },
  { ...who, kind: "tls.failure", leg: "client", negotiation: "direct", reason: "no shared cipher" },
  {
    ...who,
    kind: "statement",
    message: "Bind",
    textMode: "fingerprint",
    fingerprint: "a0b1c2d3e4f5a6b7",
    parser: "libpg-query 18",
    paramCount: 2,
    paramFormats: ["text", "binary"],
    outcome: "error",
    sqlstate: "23505",
  },
  { ts, kind: "audit.key.rotation", keyType: "hmac", oldKeyId: k, newKeyId: "ef".repeat(16) },
  { ts, kind: "sink.failure", sink: "syslog", code: "ECONNREFUSED", message: "collector down", pending: 12 },
  { ts, kind: "sink.recovery", sink: "syslog", downMs: 5000, caughtUp: 12 },
  { ts, kind: "fips.status", requested: true, provider: "fips", probes: { sha256: true, md5: false } },
  { ts, kind: "audit.started", version: "0.1.0", pid: 1234 },
];

describe("audit event schema", () => {
  it("has an example of every kind, and each validates and encodes canonically", () => {
    expect(new Set(samples.map((s) => s.kind))).toEqual(new Set(AUDIT_EVENT_KINDS));
    for (const s of samples) {
      expect(validateEvent(s)).toStrictEqual(s);
      const text = encodeEvent(s);
      expect(typeof text === "string" && JSON.parse(text)).toStrictEqual(s);
    }
  });

  it("rejects unknown fields, unknown kinds, loose time stamps and bad values, naming the field", () => {
    const bad = (u: unknown) => {
      const r = validateEvent(u);
      return isAuditError(r) ? r.message : "valid";
    };
    expect(bad({ ...samples[3], password: "hunter2" })).toContain('["password"]');
    expect(bad({ ...samples[3], kind: "auth.whatever" })).toContain("Expected");
    expect(bad({ ...samples[3], ts: "2026-01-02T03:04:05.123Z" })).toContain('["ts"]');
    expect(bad({ ...samples[1], clientBytesIn: -1 })).toContain('["clientBytesIn"]');
    expect(bad({ ...samples[7], machine: "other" })).toContain('["machine"]');
    expect(bad({ ...samples[5], sqlstate: "bad" })).toContain('["sqlstate"]');
  });
});
