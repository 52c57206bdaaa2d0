import { connect } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { removeTemplate, startTlsPostgres, type TlsPostgres } from "../tls/pg15.ts";
import { logged, psql } from "./support.ts";

/**
 * Upstream TLS through the running proxy, against Debian's PostgreSQL with ssl=on and only
 * `hostssl` in pg_hba: verify-full logs in (SCRAM-SHA-256-PLUS, bound to PostgreSQL's
 * certificate); a certificate for another host name, an untrusted CA or a server without TLS
 * fail closed with an error to the client, never a plaintext fallback.
 */

const certs = testCerts();
let good: TlsPostgres;
let wrongHost: TlsPostgres;
let noTls: TlsPostgres;

beforeAll(async () => {
  [good, wrongHost, noTls] = await Promise.all([
    startTlsPostgres(certs.server),
    startTlsPostgres(certs.wrongHost),
    startTlsPostgres(undefined),
  ]);
}, 90_000);
afterAll(async () => {
  await Promise.all([good?.stop(), wrongHost?.stop(), noTls?.stop()]);
  removeTemplate();
});

const through = async (
  pg: TlsPostgres,
  tls: Record<string, unknown>,
  f: (proxy: TestProxy) => Promise<void>,
): Promise<void> => {
  const proxy = await startProxy({
    upstream: { host: "127.0.0.1", port: pg.port, user: pg.user, password: pg.password, tls },
    log: { level: "info" },
  });
  try {
    await f(proxy);
  } finally {
    await proxy.close();
  }
};

const SSL_IN_USE = "select ssl || ' ' || version from pg_stat_ssl where pid = pg_backend_pid()";

describe("upstream.tls through the proxy (PostgreSQL 15, ssl=on)", () => {
  it("verify-full with the CA: the backend sees TLS, and the login used SCRAM-SHA-256-PLUS", async () => {
    await through(good, { mode: "verify-full", ca: certs.ca.cert }, async (proxy) => {
      const r = await psql(proxy.port, "sslmode=disable", SSL_IN_USE);
      expect(r.stderr).toBe("");
      expect(r.stdout.trim()).toBe("true TLSv1.3");
      const ready = logged(proxy, "session ready").at(-1);
      expect(ready?.upstreamAuth).toBe("SCRAM-SHA-256-PLUS");
      expect(ready?.upstreamTls).toBe("TLSv1.3");
    });
  });

  it("verify-full with servername localhost checks that name", async () => {
    await through(
      good,
      { mode: "verify-full", ca: certs.ca.cert, servername: "localhost" },
      async (proxy) => {
        expect((await psql(proxy.port, "sslmode=disable", SSL_IN_USE)).stdout.trim()).toBe("true TLSv1.3");
      },
    );
  });

  it("verify-full against a certificate for another host fails closed with 08006 to the client", async () => {
    await through(wrongHost, { mode: "verify-full", ca: certs.ca.cert }, async (proxy) => {
      const r = await psql(proxy.port, "sslmode=disable");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("upstream TLS handshake failed: ERR_TLS_CERT_ALTNAME_INVALID");
      const failed = logged(proxy, "upstream login failed").at(-1);
      expect(failed?.code).toBe("PGW_UPSTREAM_TLS");
    });
  });

  it("verify-ca accepts the wrong-host certificate (chain only)", async () => {
    await through(wrongHost, { mode: "verify-ca", ca: certs.ca.cert }, async (proxy) => {
      expect((await psql(proxy.port, "sslmode=disable", SSL_IN_USE)).stdout.trim()).toBe("true TLSv1.3");
    });
  });

  it("verify-full with an untrusted CA fails closed", async () => {
    await through(good, { mode: "verify-full", ca: certs.untrustedCa.cert }, async (proxy) => {
      const r = await psql(proxy.port, "sslmode=disable");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("upstream TLS handshake failed");
    });
  });

  it("require against a server without TLS fails: no plaintext fallback", async () => {
    await through(noTls, { mode: "require" }, async (proxy) => {
      const r = await psql(proxy.port, "sslmode=disable");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("upstream server does not support TLS");
    });
  });

  it("a cancel still reaches the backend when the upstream leg is TLS", async () => {
    await through(good, { mode: "verify-full", ca: certs.ca.cert }, async (proxy) => {
      const c = new pg.Client(proxy.connection());
      await c.connect();
      try {
        const started = Date.now();
        const sleeping = c.query("select pg_sleep(5)").catch((e: Error & { code?: string }) => e.code);
        await new Promise((r) => setTimeout(r, 300));
        const key = c as unknown as { processID: number; secretKey: number };
        const s = connect({ host: "127.0.0.1", port: proxy.port });
        await new Promise((r) => s.once("connect", r));
        s.on("error", () => {});
        const secret = Buffer.alloc(4);
        secret.writeInt32BE(key.secretKey);
        s.end(encodeCancelRequest(key.processID, secret));
        expect(await sleeping).toBe("57014");
        expect(Date.now() - started).toBeLessThan(4000);
      } finally {
        await c.end();
      }
    });
  });
});
