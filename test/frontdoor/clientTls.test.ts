import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeGSSENCRequest, encodeSSLRequest } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { fieldsOf } from "../support/hostile.ts";
import { TEST_PASSWORD, type TestProxy } from "../support/proxy.ts";
import { splitMessages, WireClient } from "../support/wire.ts";
import { sClient } from "../tls/harness.ts";
import { collect, directTls, logged, psql, startTap, startupFor, tlsProxy } from "./support.ts";

/**
 * Client-leg TLS through the running proxy: SSLRequest → `S` and the handshake on the same socket,
 * direct TLS with ALPN, GSSENCRequest → `N`, `require` refusing plaintext before any credential,
 * pipelined bytes, the cipher policy, reload, and a tap showing nothing crosses in clear.
 */

const certs = testCerts();
const modes = ["disable", "allow", "prefer", "require"] as const;
const proxies = new Map<string, TestProxy>();

beforeAll(async () => {
  for (const mode of modes) proxies.set(mode, await tlsProxy({ mode }));
}, 30_000);
afterAll(async () => {
  for (const p of proxies.values()) await p.close();
});

const sslmodes = {
  disable: "sslmode=disable",
  allow: "sslmode=allow",
  prefer: "sslmode=prefer",
  require: "sslmode=require",
  "verify-full": `sslmode=verify-full sslrootcert=${certs.ca.cert}`,
} as const;

/** What PostgreSQL does for each pair: TLS used, plaintext used, or refused. */
const expected = (
  server: (typeof modes)[number],
  client: keyof typeof sslmodes,
): "tls" | "plain" | "refused" => {
  if (server === "disable")
    return client === "disable" || client === "allow" || client === "prefer" ? "plain" : "refused";
  if (client === "disable") return server === "require" ? "refused" : "plain";
  // libpq's allow tries plaintext first and retries with TLS when refused.
  if (client === "allow") return server === "require" ? "tls" : "plain";
  return "tls";
};

describe("psql sslmode × pgwarden tls.mode", () => {
  for (const server of modes)
    for (const client of Object.keys(sslmodes) as (keyof typeof sslmodes)[]) {
      const want = expected(server, client);
      it(`tls.mode ${server}, sslmode ${client}: ${want}`, async () => {
        const proxy = proxies.get(server)!;
        const before = logged(proxy, "TLS established").length;
        const r = await psql(
          proxy.port,
          sslmodes[client],
          "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        );
        if (want === "refused") {
          expect(r.code).not.toBe(0);
          if (server === "require") expect(r.stderr).toContain("TLS is required");
          else expect(r.stderr).toMatch(/server does not support SSL/);
          return;
        }
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        // The upstream leg is plaintext here, whatever the client leg is.
        expect(r.stdout.trim()).toBe("f");
        expect(logged(proxy, "TLS established").length - before).toBe(want === "tls" ? 1 : 0);
      });
    }

  it("verify-full fails against a certificate for another host name, as libpq should", async () => {
    const proxy = await tlsProxy({ mode: "require", cert: certs.wrongHost.cert, key: certs.wrongHost.key });
    try {
      const r = await psql(proxy.port, sslmodes["verify-full"]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/does not match host name/);
    } finally {
      await proxy.close();
    }
  });
});

describe("node-postgres ssl × pgwarden tls.mode", () => {
  const query = async (port: number, ssl: pg.ClientConfig["ssl"]) => {
    const c = new pg.Client({
      host: "127.0.0.1",
      port,
      user: "postgres",
      password: TEST_PASSWORD,
      database: "postgres",
      ssl,
    });
    c.on("error", () => {});
    try {
      await c.connect();
      return (await c.query("select 1 as one")).rows[0].one as number;
    } catch (e) {
      return e as Error;
    } finally {
      await c.end().catch(() => {});
    }
  };
  const verified = { ca: readFileSync(certs.ca.cert, "utf8"), servername: "localhost" };

  it("require refuses ssl: false with 28000 and accepts verified TLS", async () => {
    const port = proxies.get("require")!.port;
    const plain = await query(port, false);
    expect(plain).toBeInstanceOf(Error);
    expect((plain as Error & { code?: string }).code).toBe("28000");
    expect(await query(port, verified)).toBe(1);
    expect(await query(port, { rejectUnauthorized: false })).toBe(1);
  });

  it("prefer accepts both; disable refuses TLS as PostgreSQL does", async () => {
    expect(await query(proxies.get("prefer")!.port, false)).toBe(1);
    expect(await query(proxies.get("prefer")!.port, verified)).toBe(1);
    const refused = await query(proxies.get("disable")!.port, verified);
    expect(refused).toBeInstanceOf(Error);
    expect((refused as Error).message).toMatch(/does not support SSL/);
  });

  it("a client that trusts another CA refuses pgwarden's certificate", async () => {
    const r = await query(proxies.get("require")!.port, { ca: readFileSync(certs.untrustedCa.cert, "utf8") });
    expect(r).toBeInstanceOf(Error);
  });
});

describe("the first packet with TLS on offer", () => {
  it("with require, a plaintext StartupMessage gets 28000 before any authentication request", async () => {
    const c = await WireClient.open(proxies.get("require")!.port);
    c.send(startupFor());
    const { data, closed } = await collect(c.socket);
    expect(closed).toBe(true);
    const messages = splitMessages(data);
    expect(messages.map((m) => m.type)).toEqual(["E"]);
    const f = fieldsOf(messages[0]!.msg);
    expect(f.get("C")).toBe("28000");
    expect(f.get("M")).toBe("TLS is required: connection without encryption refused");
  });

  it("bytes pipelined after SSLRequest are refused before `S` is written", async () => {
    const proxy = proxies.get("require")!;
    const c = await WireClient.open(proxy.port);
    c.send(encodeSSLRequest(), startupFor());
    const { data, closed } = await collect(c.socket);
    expect(closed).toBe(true);
    expect(data[0]).not.toBe(0x53);
    const [error] = splitMessages(data);
    expect(fieldsOf(error!.msg).get("C")).toBe("08P01");
    expect(fieldsOf(error!.msg).get("M")).toBe("received unencrypted data after SSL request");
  });

  it("GSSENCRequest gets N, then SSLRequest gets S and TLS; a second SSLRequest inside TLS is refused", async () => {
    const raw = connect({ host: "127.0.0.1", port: proxies.get("require")!.port });
    await new Promise((r) => raw.once("connect", r));
    const answer = () => new Promise<string>((r) => raw.once("data", (d: Buffer) => r(d.toString("latin1"))));
    raw.write(encodeGSSENCRequest());
    expect(await answer()).toBe("N");
    raw.write(encodeSSLRequest());
    expect(await answer()).toBe("S");
    const secure = tls.connect({ socket: raw, ca: readFileSync(certs.ca.cert), servername: "localhost" });
    await new Promise<void>((r, j) => {
      secure.once("secureConnect", () => r());
      secure.once("error", j);
    });
    expect(secure.getProtocol()).toBe("TLSv1.3");
    expect(secure.getCipher().standardName).toBe("TLS_AES_256_GCM_SHA384");
    const got = collect(secure);
    secure.write(encodeSSLRequest());
    const { data, closed } = await got;
    expect(closed).toBe(true);
    // As PostgreSQL: a repeated request reads as a protocol version it lacks.
    expect(fieldsOf(splitMessages(data)[0]!.msg).get("C")).toBe("0A000");
  });

  it("the login deadline bounds a client that stalls in the handshake", async () => {
    const proxy = await tlsProxy(
      { mode: "require" },
      { auth: { method: "scram-sha-256", timeoutMs: 300, allowPasswordOverPlaintext: true } },
    );
    try {
      const c = await WireClient.open(proxy.port);
      const started = Date.now();
      c.send(encodeSSLRequest());
      const { data, closed } = await collect(c.socket, 3000);
      expect(closed).toBe(true);
      expect(data.toString("latin1")).toBe("S");
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      await proxy.close();
    }
  });
});

describe("direct TLS (sslnegotiation=direct)", () => {
  it("with ALPN postgresql: the startup packet follows inside TLS and gets SCRAM", async () => {
    const s = await directTls(proxies.get("require")!.port, ["postgresql"]);
    expect(s).toBeInstanceOf(tls.TLSSocket);
    const secure = s as tls.TLSSocket;
    expect(secure.alpnProtocol).toBe("postgresql");
    const got = collect(secure, 1000);
    secure.write(startupFor());
    const { data } = await got;
    expect(String.fromCharCode(data[0]!)).toBe("R");
    secure.destroy();
  });

  it("without ALPN the connection is closed without a session", async () => {
    const proxy = proxies.get("require")!;
    const before = logged(proxy, "TLS handshake failed").length;
    const s = await directTls(proxy.port, undefined);
    if (s instanceof tls.TLSSocket) {
      const { data, closed } = await collect(s);
      expect(closed).toBe(true);
      expect(data.length).toBe(0);
    }
    await new Promise((r) => setTimeout(r, 100));
    const failed = logged(proxy, "TLS handshake failed").slice(before);
    expect(failed.map((l) => l.code)).toEqual(["PGW_TLS_ALPN"]);
  });

  it("with tls.mode disable a ClientHello is dropped", async () => {
    const s = await directTls(proxies.get("disable")!.port, ["postgresql"]);
    expect(s).toBeInstanceOf(Error);
  });
});

describe("cipher policy on the client leg (openssl s_client through pgwarden)", () => {
  // s_client holds the connection open: a short login deadline ends each run quickly.
  const fast = { auth: { method: "scram-sha-256", timeoutMs: 1000 } };
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await tlsProxy({ mode: "require" }, fast);
  });
  afterAll(() => proxy.close());
  const port = () => proxy.port;
  it("TLS 1.2 with ECDHE-AES-GCM is accepted (the invocation works)", async () => {
    const r = await sClient(port(), ["-tls1_2", "-CAfile", certs.ca.cert]);
    expect(r.stdout).toMatch(/Cipher is ECDHE-RSA-AES256-GCM-SHA384/);
  });
  for (const version of ["-tls1", "-tls1_1"])
    it(`${version} is refused`, async () => {
      const r = await sClient(port(), [version, "-cipher", "ALL:@SECLEVEL=0"]);
      expect(r.stdout).not.toMatch(/Cipher is (?!\(NONE\))/);
      expect(r.code).not.toBe(0);
    });
  it("a ChaCha20-only client is refused, and accepted when the policy allows ChaCha (control)", async () => {
    const chacha = ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"];
    const refused = await sClient(port(), chacha);
    expect(refused.stdout).not.toMatch(/Cipher is TLS_CHACHA20/);
    expect(refused.code).not.toBe(0);
    const permissive = await tlsProxy(
      { mode: "require", ciphersuites: "TLS_CHACHA20_POLY1305_SHA256" },
      fast,
    );
    try {
      const accepted = await sClient(permissive.port, chacha);
      expect(accepted.stdout).toMatch(/Cipher is TLS_CHACHA20_POLY1305_SHA256/);
    } finally {
      await permissive.close();
    }
  });
});

describe("what crosses the client leg", () => {
  const MARKER = "front-door-marker-7f3a";
  it("under require, a tap sees no query text, user name or SCRAM exchange in clear", async () => {
    const tap = await startTap(proxies.get("require")!.port);
    try {
      const r = await psql(tap.port, "sslmode=require", `select '${MARKER}'`);
      expect(r.stdout.trim()).toBe(MARKER);
      const wire = Buffer.concat([...tap.fromClient, ...tap.fromServer]).toString("latin1");
      expect(wire.length).toBeGreaterThan(1000);
      for (const clear of [MARKER, "SCRAM-SHA-256", "postgres", "application_name", "psql"])
        expect(wire).not.toContain(clear);
    } finally {
      await tap.close();
    }
  });

  it("control: over plaintext the same tap sees the query", async () => {
    const tap = await startTap(proxies.get("prefer")!.port);
    try {
      const r = await psql(tap.port, "sslmode=disable", `select '${MARKER}'`);
      expect(r.stdout.trim()).toBe(MARKER);
      expect(Buffer.concat(tap.fromClient).toString("latin1")).toContain(MARKER);
    } finally {
      await tap.close();
    }
  });
});

describe("certificate reload (SIGHUP)", () => {
  it("new handshakes get the new certificate; a session already open keeps running", async () => {
    const dir = mkdtempSync(join(tmpdir(), "pgwarden-reload-"));
    const cert = join(dir, "server.crt");
    const key = join(dir, "server.key");
    copyFileSync(certs.server.cert, cert);
    copyFileSync(certs.server.key, key);
    const proxy = await tlsProxy({ mode: "require", cert, key });
    const fingerprint = async () => {
      const s = (await directTls(proxy.port, ["postgresql"])) as tls.TLSSocket;
      const f = s.getPeerX509Certificate()!.fingerprint256;
      s.destroy();
      return f;
    };
    const open = new pg.Client({
      ...proxy.connection(),
      ssl: { ca: readFileSync(certs.ca.cert, "utf8"), servername: "localhost" },
    });
    try {
      await open.connect();
      const first = await fingerprint();
      copyFileSync(certs.server2.cert, cert);
      copyFileSync(certs.server2.key, key);
      expect(proxy.server.reload().tls).toEqual({ ok: true });
      const second = await fingerprint();
      expect(second).not.toBe(first);
      expect((await open.query("select 2 as two")).rows[0].two).toBe(2);
      // A broken file keeps the running certificate.
      rmSync(key);
      const failed = proxy.server.reload().tls;
      expect(failed?.ok).toBe(false);
      expect(failed?.reason).toContain("tls.key");
      expect(await fingerprint()).toBe(second);
    } finally {
      await open.end().catch(() => {});
      await proxy.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
