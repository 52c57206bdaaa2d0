import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { isAuditError } from "../../src/audit/AuditError.ts";
import { type AuditEvent, validateEvent } from "../../src/audit/AuditEvent.ts";
import { RecordBuilder } from "../../src/audit/RecordBuilder.ts";
import type { ProxyEvent } from "../../src/runtime/EventSink.ts";

const T0 = Date.UTC(2026, 0, 2, 3, 4, 5);
const transition = (conn: string, machine: "client" | "server", from: string, to: string): ProxyEvent => ({
  kind: "transition",
  connectionId: conn,
  machine,
  from,
  to,
  cause: `${from}>${to}`,
  at: 0,
});
const query = (sql: string): ProxyEvent => ({
  kind: "statement",
  conn: "c1",
  server: "s1",
  message: "Query",
  sql,
  commandTag: "SELECT 1",
  rows: 1,
  durationMs: 0.2,
  outcome: "ok",
});

/** Runs events through a builder, one millisecond apart; every output must be a valid event. */
const build = (events: readonly ProxyEvent[], o: { fold?: boolean; holdMs?: number } = {}) => {
  const b = new RecordBuilder({ statements: "full", parser: undefined, ...o });
  const out: AuditEvent[] = [];
  for (const [i, e] of events.entries()) b.add(e, T0 + i, out);
  b.flushHeld(out);
  for (const ev of out) expect(isAuditError(validateEvent(ev)), JSON.stringify(ev)).toBe(false);
  return { out, b };
};

/** Every transition in the output, folded or not, as `conn machine from>to`. */
const allTransitions = (out: readonly AuditEvent[]) =>
  out.flatMap((r) =>
    r.kind === "transition"
      ? [`${r.session} ${r.machine} ${r.from}>${r.to}`]
      : r.kind === "statement"
        ? (r.transitions ?? []).map(
            (t) => `${t.machine === "client" ? r.session : r.server} ${t.machine} ${t.from}>${t.to}`,
          )
        : [],
  );

describe("RecordBuilder", () => {
  const session: ProxyEvent[] = [
    { kind: "connectionAccepted", conn: "c1", remote: "127.0.0.1:5000", local: "127.0.0.1:6432" },
    transition("c1", "client", "startup.fresh", "authenticating"),
    { kind: "authSuccess", conn: "c1", method: "scram-sha-256", user: "alice" },
    transition("c1", "client", "authenticating", "ready.idle"),
    transition("s1", "server", "connecting", "idle"),
    transition("c1", "client", "ready.idle", "busy"),
    transition("s1", "server", "idle", "active"),
    transition("s1", "server", "active", "idle"),
    transition("c1", "client", "busy", "ready.idle"),
    query("SELECT 1"),
    transition("c1", "client", "ready.idle", "closed"),
    {
      kind: "connectionClosed",
      conn: "c1",
      ms: 5,
      bytesFromClient: 10,
      bytesFromServer: 20,
      user: "alice",
      database: "app",
    },
  ];

  it("folds a statement's transitions of both machines into its record, in time order, with their times", () => {
    const { out } = build(session);
    expect(out.map((r) => r.kind)).toEqual([
      "connection.accepted",
      "transition",
      "auth.success",
      "statement",
      "transition",
      "connection.closed",
    ]);
    const st = out[3] as Extract<AuditEvent, { kind: "statement" }>;
    expect(st.server).toBe("s1");
    expect(st.identity).toBe("alice");
    expect(st.transitions!.map((t) => `${t.machine} ${t.from}>${t.to}`)).toEqual([
      "client authenticating>ready.idle",
      "server connecting>idle",
      "client ready.idle>busy",
      "server idle>active",
      "server active>idle",
      "client busy>ready.idle",
    ]);
    expect(st.transitions![0]!.ts).toBe("2026-01-02T03:04:05.003000Z");
    expect(out[4]).toMatchObject({ kind: "transition", session: "c1", to: "closed", identity: "alice" });
  });

  it("without folding, every transition is its own record, as before", () => {
    const { out } = build(session, { fold: false });
    expect(out.filter((r) => r.kind === "transition").length).toBe(8);
    expect(out.find((r) => r.kind === "statement")).not.toHaveProperty("transitions");
  });

  it("writes out transitions held longer than the hold time, and only those", () => {
    const b = new RecordBuilder({ statements: "none", parser: undefined, holdMs: 100 });
    const out: AuditEvent[] = [];
    b.add(transition("s9", "server", "idle", "resetting"), T0, out);
    b.add(transition("s8", "server", "idle", "resetting"), T0 + 80, out);
    b.flushHeld(out, T0 + 99);
    expect(out).toEqual([]);
    b.flushHeld(out, T0 + 100);
    expect(out.map((r) => r.session)).toEqual(["s9"]);
    expect(b.holding).toBe(1);
  });

  it("records the TLS handshake: version, cipher, the client certificate's subject and fingerprint", () => {
    const fp = Array.from({ length: 32 }, (_, i) => i.toString(16).padStart(2, "0").toUpperCase()).join(":");
    const { out } = build([
      { kind: "connectionAccepted", conn: "c2", remote: "127.0.0.1:5001", local: "127.0.0.1:6432" },
      {
        kind: "tlsHandshake",
        conn: "c2",
        negotiation: "direct",
        ok: true,
        protocol: "TLSv1.3",
        cipher: "TLS_AES_256_GCM_SHA384",
        clientCertificate: fp,
        clientSubject: "CN=alice\nO=Example",
      },
      { kind: "tlsHandshake", conn: "c3", negotiation: "ssl-request", ok: false, reason: "no shared cipher" },
    ]);
    expect(out[1]).toEqual({
      ts: "2026-01-02T03:04:05.001000Z",
      session: "c2",
      source: "127.0.0.1:5001",
      kind: "tls.established",
      leg: "client",
      negotiation: "direct",
      version: "TLSv1.3",
      cipher: "TLS_AES_256_GCM_SHA384",
      peerSubject: "CN=alice, O=Example",
      peerFingerprint: fp.replaceAll(":", "").toLowerCase(),
    });
    expect(out[2]).toMatchObject({ kind: "tls.failure", session: "c3", reason: "no shared cipher" });
  });

  it("records pool checkout and release, the release with how long the server was held", () => {
    const { out } = build([
      {
        kind: "poolCheckout",
        conn: "c1",
        server: "s4",
        pool: "app/app_rw",
        mode: "transaction",
        waitedMs: 1.5,
      },
      transition("s4", "server", "idle", "active"),
      transition("s4", "server", "active", "idle"),
      { kind: "poolRelease", conn: "c1", server: "s4", pool: "app/app_rw", reason: "idle" },
    ]);
    expect(out.map((r) => r.kind)).toEqual(["pool.checkout", "transition", "transition", "pool.release"]);
    expect(out[0]).toMatchObject({ pool: "app/app_rw", server: "s4", mode: "transaction", waitMs: 1.5 });
    expect(out[3]).toMatchObject({ server: "s4", reason: "idle", heldMs: 3 });
  });

  // Whatever the interleaving, each transition comes out exactly once and each connection's in order.
  test.prop([
    fc.array(
      fc.oneof(
        fc.record({ t: fc.constant("tr" as const), conn: fc.constantFrom("c1", "s1", "c2") }),
        fc.record({ t: fc.constant("q" as const) }),
        fc.record({ t: fc.constant("auth" as const), conn: fc.constantFrom("c1", "c2") }),
      ),
      { maxLength: 60 },
    ),
  ])("every transition is recorded once, in order per connection", (steps) => {
    const counters = new Map<string, number>();
    const events: ProxyEvent[] = steps.map((s) => {
      if (s.t === "q") return query("SELECT 1");
      if (s.t === "auth") return { kind: "authAttempt", conn: s.conn, method: "scram-sha-256", user: "u" };
      const n = counters.get(s.conn) ?? 0;
      counters.set(s.conn, n + 1);
      return transition(s.conn, s.conn.startsWith("s") ? "server" : "client", `${n}`, `${n + 1}`);
    });
    const got = allTransitions(build(events).out);
    for (const [conn, n] of counters) {
      const mine = got.filter((g) => g.startsWith(`${conn} `)).map((g) => g.split(" ")[2]);
      expect(mine).toEqual(Array.from({ length: n }, (_, i) => `${i}>${i + 1}`));
    }
    expect(got.length).toBe([...counters.values()].reduce((a, b) => a + b, 0));
  });
});
