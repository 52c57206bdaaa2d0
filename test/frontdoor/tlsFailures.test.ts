import { chmodSync, copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FIPS_TLS12_CIPHERS } from "../../src/adapters/tls/config.ts";
import { encodeSSLRequest } from "../../src/protocol/startup.ts";
import { type CertPair, testCerts } from "../support/certs.ts";
import type { TestProxy } from "../support/proxy.ts";
import { runClient } from "../support/run.ts";
import { WireClient } from "../support/wire.ts";
import { sClient } from "../tls/harness.ts";
import { removeTemplate, startTlsPostgres, type TlsPostgres } from "../tls/pg15.ts";
import { collect, logged, tlsProxy } from "./support.ts";

/**
 * What a client sees when the client-leg handshake fails, next to what PostgreSQL shows the same
 * client: a TLS alert from OpenSSL where OpenSSL decides (protocol version, no shared cipher),
 * and for a client certificate that fails verification the reason, then the connection closes.
 */

const certs = testCerts();
let pg: TlsPostgres;
let proxy: TestProxy;
let keys: string;

// libpq refuses a client key others can read.
const privateCopy = (pair: CertPair, name: string): CertPair => {
  const key = join(keys, `${name}.key`);
  copyFileSync(pair.key, key);
  chmodSync(key, 0o600);
  return { cert: pair.cert, key };
};

beforeAll(async () => {
  keys = mkdtempSync(join(tmpdir(), "pgwarden-tls-failures-"));
  // The same policy on both: TLS 1.2 minimum, the FIPS TLS 1.2 suites, client certificates checked.
  pg = await startTlsPostgres(certs.server, {
    settings: [
      "ssl_min_protocol_version = 'TLSv1.2'",
      `ssl_ciphers = '${FIPS_TLS12_CIPHERS}'`,
      "ssl_ecdh_curve = 'prime256v1'",
      "ssl_ca_file = 'ca.crt'",
      "ssl_crl_file = 'ca.crl'",
    ],
    files: { "ca.crt": certs.ca.cert, "ca.crl": certs.crl },
  });
  proxy = await tlsProxy(
    { mode: "require", clientCa: certs.ca.cert, clientCrl: certs.crl },
    { auth: { method: "scram-sha-256", timeoutMs: 1500 } },
  );
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await pg?.stop();
  removeTemplate();
  rmSync(keys, { recursive: true, force: true });
});

const psqlWith = (port: number, params: string) =>
  runClient(
    "psql",
    ["-X", "-At", "-c", "select 1", `host=127.0.0.1 port=${port} user=postgres dbname=postgres ${params}`],
    {
      timeoutMs: 15_000,
    },
  );

/** The same client against PostgreSQL and against pgwarden. */
const both = async <T>(run: (port: number) => Promise<T>): Promise<{ pg: T; pgwarden: T }> => ({
  pg: await run(pg.port),
  pgwarden: await run(proxy.port),
});

/** Log lines "TLS handshake failed" and tlsHandshake failures emitted while `act` ran. */
const failuresDuring = async (act: () => Promise<unknown>) => {
  const logs = logged(proxy, "TLS handshake failed").length;
  const events = proxy.events.length;
  const deadlines = logged(proxy, "login deadline passed").length;
  await act();
  await new Promise((r) => setTimeout(r, 100));
  return {
    logs: logged(proxy, "TLS handshake failed").slice(logs),
    deadlineLogs: logged(proxy, "login deadline passed").length - deadlines,
    events: proxy.events.slice(events).filter((e) => e.kind === "tlsHandshake"),
  };
};

describe("refusals OpenSSL makes: the client gets the same alert as from PostgreSQL", () => {
  for (const [what, args, alert, opensslCode] of [
    [
      "TLS 1.1",
      ["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"],
      "alert protocol version",
      "ERR_SSL_UNSUPPORTED_PROTOCOL",
    ],
    [
      "no shared TLS 1.2 suite (ChaCha20 only)",
      ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"],
      "alert handshake failure",
      "ERR_SSL_NO_SHARED_CIPHER",
    ],
  ] as const)
    it(`${what}: "${alert}", one warning with a stable code, an event, the socket closed`, async () => {
      let seen: {
        pg: { stderr: string; code: number | null };
        pgwarden: { stderr: string; code: number | null };
      };
      const f = await failuresDuring(async () => {
        seen = await both((port) => sClient(port, args));
      });
      expect(seen!.pg.stderr).toContain(alert);
      expect(seen!.pgwarden.stderr).toContain(alert);
      expect(seen!.pgwarden.code).toBe(seen!.pg.code);
      expect(f.logs).toHaveLength(1);
      expect(f.logs[0]).toMatchObject({ level: 40, code: "PGW_TLS_HANDSHAKE" });
      expect(String(f.logs[0]!.reason)).toContain(opensslCode);
      expect(f.events).toEqual([
        expect.objectContaining({ ok: false, reason: expect.stringContaining(opensslCode) }),
      ]);
    });
});

describe("a client certificate that fails verification", () => {
  for (const [name, pair, pgAlert, reason] of [
    [
      "expired",
      certs.clientExpired,
      "alert certificate expired",
      "certificate has expired (CERT_HAS_EXPIRED)",
    ],
    ["revoked", certs.clientRevoked, "alert certificate revoked", "certificate revoked (CERT_REVOKED)"],
    ["untrusted", certs.untrusted, "alert unknown ca", "UNABLE_TO_VERIFY_LEAF_SIGNATURE"],
  ] as const)
    it(`${name}: PostgreSQL alerts "${pgAlert}"; pgwarden, which cannot alert after Node's handshake, sends FATAL 28000 with the reason`, async () => {
      const c = privateCopy(pair, name);
      let seen: {
        pg: { stderr: string; code: number | null };
        pgwarden: { stderr: string; code: number | null };
      };
      let took = 0;
      const f = await failuresDuring(async () => {
        seen = await both(async (port) => {
          const started = Date.now();
          const r = await psqlWith(port, `sslmode=require sslcert=${c.cert} sslkey=${c.key}`);
          took = Date.now() - started;
          return r;
        });
      });
      expect(seen!.pg.stderr).toContain(pgAlert);
      expect(seen!.pg.code).toBe(2);
      expect(seen!.pgwarden.code).toBe(2);
      expect(seen!.pgwarden.stderr).toContain("FATAL:  client certificate rejected:");
      expect(seen!.pgwarden.stderr).toContain(reason);
      // Closed promptly: psql does not wait for a deadline.
      expect(took).toBeLessThan(1500);
      expect(f.logs).toHaveLength(1);
      expect(f.logs[0]).toMatchObject({ level: 40, code: "PGW_TLS_CLIENT_CERT" });
      expect(f.events).toEqual([
        expect.objectContaining({ ok: false, reason: expect.stringContaining(reason) }),
      ]);
    });

  it("control: the good certificate passes verification (its identity is then refused for user postgres)", async () => {
    const c = privateCopy(certs.client, "good");
    const r = await psqlWith(proxy.port, `sslmode=require sslcert=${c.cert} sslkey=${c.key}`);
    expect(r.stderr).toContain('FATAL:  certificate authentication failed for user "postgres"');
    const plain = await psqlWith(proxy.port, "sslmode=require");
    expect(plain.stdout.trim()).toBe("1");
  });
});

describe("handshakes that never finish", () => {
  it("a client that stalls after `S` is closed at the login deadline, logged once as PGW_TLS_TIMEOUT", async () => {
    let data = "";
    let elapsed = 0;
    const f = await failuresDuring(async () => {
      const c = await WireClient.open(proxy.port);
      const started = Date.now();
      c.send(encodeSSLRequest());
      const got = await collect(c.socket, 5000);
      elapsed = Date.now() - started;
      expect(got.closed).toBe(true);
      data = got.data.toString("latin1");
    });
    expect(data).toBe("S");
    // auth.timeoutMs is 1500 for this proxy: the handshake timer takes what is left of it.
    expect(elapsed).toBeGreaterThan(1000);
    expect(elapsed).toBeLessThan(2500);
    expect(f.logs).toEqual([expect.objectContaining({ level: 40, code: "PGW_TLS_TIMEOUT" })]);
    expect(f.deadlineLogs).toBe(0);
    expect(f.events).toEqual([expect.objectContaining({ ok: false, reason: "TLS handshake timed out" })]);
  });

  it("a client that goes away mid-handshake is logged once at info as PGW_TLS_CLOSED", async () => {
    const f = await failuresDuring(async () => {
      const c = await WireClient.open(proxy.port);
      c.send(encodeSSLRequest());
      await c.until((w) => w.received.length >= 1, 3000, "S");
      // The start of a ClientHello record, then nothing more.
      c.send(Buffer.from([0x16, 0x03, 0x01, 0x01, 0x00, 0x01]));
      await new Promise((r) => setTimeout(r, 100));
      c.socket.destroy();
    });
    expect(f.logs).toEqual([expect.objectContaining({ level: 30, code: "PGW_TLS_CLOSED" })]);
    expect(f.events).toEqual([expect.objectContaining({ ok: false })]);
  });
});
