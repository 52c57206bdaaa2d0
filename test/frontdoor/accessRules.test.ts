import { readFileSync } from "node:fs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deriveScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { decodeConfig, type PgwardenConfig } from "../../src/runtime/config.ts";
import type { ProxyEvent } from "../../src/runtime/EventSink.ts";
import { testCerts } from "../support/certs.ts";
import { startProxy, TEST_PASSWORD, TEST_USER, type TestProxy } from "../support/proxy.ts";
import { psql } from "./support.ts";

/**
 * Ordered access rules decided after the first packet from source, transport (plain/tls/mtls),
 * identity and database; each decision names its rule in the log and as an event. mTLS with
 * good, expired, revoked and untrusted certificates, certificate mapping, and the methods
 * `cert`, `cert+scram`, `trust`, `scram-sha-256`.
 */

const certs = testCerts();
const ALICE_PASSWORD = "alice-password";
const users = new Map([
  [TEST_USER, deriveScramVerifier(TEST_PASSWORD, { salt: Buffer.alloc(16, 7) })],
  ["alice", deriveScramVerifier(ALICE_PASSWORD, { salt: Buffer.alloc(16, 9) })],
  ["carol", deriveScramVerifier("carol-password", { salt: Buffer.alloc(16, 3) })],
]);

const rules = [
  { name: "no-carol", identities: ["@contractors"], action: "reject" },
  { name: "remote-ops", source: ["10.0.0.0/8"], action: "allow", method: "trust" },
  {
    name: "alice-cert-only",
    transport: ["mtls"],
    identities: ["alice"],
    databases: ["postgres"],
    method: "cert",
    action: "allow",
  },
  {
    name: "alice-cert-and-password",
    transport: ["mtls"],
    identities: ["alice"],
    databases: ["template1"],
    method: "cert+scram",
    action: "allow",
  },
  {
    name: "tls-users",
    transport: ["tls"],
    identities: [TEST_USER],
    action: "allow",
    method: "scram-sha-256",
  },
  {
    name: "local-trust-monitoring",
    source: ["127.0.0.1/32"],
    identities: [TEST_USER],
    databases: ["monitor"],
    action: "allow",
    method: "trust",
  },
  {
    name: "plain-users",
    transport: ["plain"],
    identities: [TEST_USER],
    databases: ["postgres"],
    action: "allow",
  },
] as const;

const tlsSection = {
  mode: "prefer",
  cert: certs.server.cert,
  key: certs.server.key,
  clientCa: certs.ca.cert,
  clientCrl: certs.crl,
};

let proxy: TestProxy;
beforeAll(async () => {
  proxy = await startProxy(
    {
      tls: tlsSection,
      access: {
        rules,
        groups: { contractors: ["carol"] },
        certMapping: [{ match: "san-email", pattern: "(.+)@example\\.com", identity: "$1" }],
      },
      log: { level: "info" },
    },
    users,
  );
});
afterAll(() => proxy.close());

const decisions = (): Extract<ProxyEvent, { kind: "accessRule" }>[] =>
  proxy.events.filter((e): e is Extract<ProxyEvent, { kind: "accessRule" }> => e.kind === "accessRule");

const pgClient = async (options: Partial<pg.ClientConfig>): Promise<string | Error> => {
  const c = new pg.Client({
    host: "127.0.0.1",
    port: proxy.port,
    user: TEST_USER,
    password: TEST_PASSWORD,
    database: "postgres",
    ...options,
  });
  c.on("error", () => {});
  try {
    await c.connect();
    return (await c.query("select current_database() as db")).rows[0].db as string;
  } catch (e) {
    return e as Error;
  } finally {
    await c.end().catch(() => {});
  }
};

const ca = readFileSync(certs.ca.cert, "utf8");
const withCert = (pair: { cert: string; key: string }) => ({
  ssl: {
    ca,
    servername: "localhost",
    cert: readFileSync(pair.cert, "utf8"),
    key: readFileSync(pair.key, "utf8"),
  },
});
const sqlstate = (r: string | Error) => (r instanceof Error ? (r as Error & { code?: string }).code : r);

describe("every access-rule outcome, named in the log and as an event", () => {
  it("allow by a rule for the transport (plain), with its method", async () => {
    expect(await pgClient({})).toBe("postgres");
    const d = decisions().at(-1)!;
    expect(d).toMatchObject({
      action: "allow",
      rule: "plain-users",
      index: 6,
      method: "scram-sha-256",
      transport: "plain",
      identity: TEST_USER,
    });
    // An allowed login is info (pino level 30); a rejection is a warning (40), like every refusal.
    expect(proxy.logs.find((l) => l.msg === d.text && l.rule === "plain-users")?.level).toBe(30);
    expect(d.text).toBe(
      `access allow by rules[6] "plain-users" with method scram-sha-256: identity "postgres" database "postgres" from 127.0.0.1 over plain`,
    );
  });

  it("the same identity over TLS matches the tls rule first", async () => {
    expect(await pgClient({ ssl: { ca, servername: "localhost" } })).toBe("postgres");
    expect(decisions().at(-1)).toMatchObject({ action: "allow", rule: "tls-users", transport: "tls" });
  });

  it("reject by a group rule: 28000 to the client, without the rule's name", async () => {
    const r = await pgClient({ user: "carol", password: "carol-password" });
    expect(sqlstate(r)).toBe("28000");
    expect((r as Error).message).not.toContain("no-carol");
    expect((r as Error).message).toContain(
      'no access rule allows connection for host 127.0.0.1, user "carol"',
    );
    const d = decisions().at(-1)!;
    expect(d).toMatchObject({ action: "reject", rule: "no-carol", index: 0 });
    expect(proxy.logs.find((l) => l.msg === d.text)?.level).toBe(40);
  });

  it("the implicit reject when no rule matches (database outside every rule)", async () => {
    const r = await pgClient({ database: "template0" });
    expect(sqlstate(r)).toBe("28000");
    expect(decisions().at(-1)).toMatchObject({ action: "reject", rule: "(implicit reject)", index: -1 });
  });

  it("a source CIDR that does not contain the peer is skipped (remote-ops never matches loopback)", () => {
    expect(decisions().some((d) => d.rule === "remote-ops")).toBe(false);
  });

  it("method trust from a rule: no password asked, even a wrong one gets in", async () => {
    const r = await psql(proxy.port, "sslmode=disable dbname=monitor", "select 1");
    // The database does not exist upstream: trust let the client past pgwarden's authentication.
    expect(r.stderr).toContain('database "monitor" does not exist');
    expect(decisions().at(-1)).toMatchObject({
      action: "allow",
      rule: "local-trust-monitoring",
      method: "trust",
    });
    expect(proxy.logs.filter((l) => l.msg === "client authenticated").at(-1)?.method).toBe("trust");
  });

  it("method scram fails on a wrong password with 28P01 (no later rule is tried)", async () => {
    const r = await pgClient({ password: "wrong" });
    expect(sqlstate(r)).toBe("28P01");
    expect(decisions().at(-1)?.rule).toBe("plain-users");
  });
});

describe("mTLS and certificate mapping", () => {
  it("a good certificate mapped by san-email: method cert logs alice in without a password", async () => {
    const r = await pgClient({ user: "alice", password: "not-asked", ...withCert(certs.client) });
    expect(r).toBe("postgres");
    expect(decisions().at(-1)).toMatchObject({
      action: "allow",
      rule: "alice-cert-only",
      method: "cert",
      transport: "mtls",
    });
    expect(
      proxy.logs.some(
        (l) =>
          l.msg ===
          'client certificate san-email "alice@example.com" mapped by certMapping[0] to identity "alice"',
      ),
    ).toBe(true);
  });

  it("cert+scram needs both: the right password passes, a wrong one fails", async () => {
    expect(
      await pgClient({
        user: "alice",
        password: ALICE_PASSWORD,
        database: "template1",
        ...withCert(certs.client),
      }),
    ).toBe("template1");
    expect(decisions().at(-1)?.rule).toBe("alice-cert-and-password");
    const wrong = await pgClient({
      user: "alice",
      password: "wrong",
      database: "template1",
      ...withCert(certs.client),
    });
    expect(sqlstate(wrong)).toBe("28P01");
  });

  it("a startup user other than the mapped identity is refused with 28000", async () => {
    const r = await pgClient({ ...withCert(certs.client) });
    expect(sqlstate(r)).toBe("28000");
    expect((r as Error).message).toBe('certificate authentication failed for user "postgres"');
  });

  it("without a certificate the transport is tls, and alice's cert rules do not match", async () => {
    const r = await pgClient({
      user: "alice",
      password: ALICE_PASSWORD,
      ssl: { ca, servername: "localhost" },
    });
    expect(sqlstate(r)).toBe("28000");
    expect(decisions().at(-1)).toMatchObject({ rule: "(implicit reject)", transport: "tls" });
  });

  for (const [name, pair, reason] of [
    ["expired", certs.clientExpired, "CERT_HAS_EXPIRED"],
    ["revoked", certs.clientRevoked, "CERT_REVOKED"],
    ["untrusted", certs.untrusted, "UNABLE_TO_VERIFY_LEAF_SIGNATURE"],
  ] as const)
    it(`a ${name} certificate ends the connection at the TLS step (${reason})`, async () => {
      const before = decisions().length;
      const r = await pgClient({ user: "alice", ...withCert(pair) });
      expect(r).toBeInstanceOf(Error);
      await new Promise((res) => setTimeout(res, 50));
      const failed = proxy.events.filter((e) => e.kind === "tlsHandshake" && !e.ok).at(-1);
      expect(failed).toMatchObject({ ok: false });
      expect((failed as { reason: string }).reason).toContain(reason);
      expect(decisions().length).toBe(before);
    });

  it("a certificate no mapping rule maps is refused with 28000", async () => {
    const other = await startProxy(
      {
        tls: tlsSection,
        access: {
          rules: [{ name: "all", action: "allow" }],
          certMapping: [{ match: "cn", pattern: "bob", identity: "bob" }],
        },
      },
      users,
    );
    try {
      const c = new pg.Client({ ...other.connection("alice"), ...withCert(certs.client) });
      c.on("error", () => {});
      const r = await c.connect().then(
        () => "connected",
        (e: Error & { code?: string }) => e.code,
      );
      await c.end().catch(() => {});
      expect(r).toBe("28000");
      expect(other.logs.some((l) => l.msg === "client certificate matched no mapping rule")).toBe(true);
    } finally {
      await other.close();
    }
  });
});

describe("rules reload (SIGHUP)", () => {
  it("new rules apply to new connections; a bad configuration keeps the running rules", async () => {
    const base = await startProxy({ access: { rules: [{ name: "everyone", action: "allow" }] } });
    try {
      const next = (input: unknown): PgwardenConfig => {
        const c = decodeConfig(input);
        if (isPgwardenError(c)) throw new Error(c.message);
        return c;
      };
      const connect = async () => {
        const c = new pg.Client(base.connection());
        c.on("error", () => {});
        const r = await c.connect().then(
          () => "ok",
          (e: Error & { code?: string }) => e.code,
        );
        await c.end().catch(() => {});
        return r;
      };
      expect(await connect()).toBe("ok");
      const open = new pg.Client(base.connection());
      await open.connect();
      const report = base.server.reload(
        next({ access: { rules: [{ name: "lockdown", action: "reject" }] } }),
      );
      expect(report.access).toEqual({ ok: true });
      expect(await connect()).toBe("28000");
      expect(base.events.filter((e) => e.kind === "accessRule").at(-1)).toMatchObject({
        rule: "lockdown",
      });
      // Sessions already admitted keep running.
      expect((await open.query("select 1 as one")).rows[0].one).toBe(1);
      await open.end();
      // A configuration that does not compile (duplicate names, built past the decoder) changes nothing.
      const good = next({});
      const duplicate = { name: "a", action: "allow" } as const;
      const failed = base.server.reload({
        ...good,
        access: { ...good.access, rules: [duplicate, duplicate] },
      }).access;
      expect(failed?.ok).toBe(false);
      expect(failed?.reason).toContain('duplicate rule name "a"');
      expect(await connect()).toBe("28000");
      expect(base.events.filter((e) => e.kind === "accessRule").at(-1)).toMatchObject({
        rule: "lockdown",
      });
    } finally {
      await base.close();
    }
  });
});
