import { X509Certificate } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { clientTlsConfig } from "../../src/adapters/tls/config.ts";
import { buildSecureContext, clientLegContextOptions } from "../../src/adapters/tls/policy.ts";
import { createReloadableContext, type ReloadableContext } from "../../src/adapters/tls/reloadableContext.ts";
import { startTlsOnSocket, type TlsSession } from "../../src/adapters/tls/startTls.ts";
import { isPgwardenError, type PgwardenError } from "../../src/errors.ts";
import { type CertPair, testCerts } from "../support/certs.ts";
import { SSL_REQUEST, sClient, startTlsTestServer, type TlsTestServer } from "./harness.ts";

const certs = testCerts();

const mtlsContext = (): tls.SecureContext => {
  const options = clientLegContextOptions(
    clientTlsConfig({
      mode: "require",
      cert: certs.server.cert,
      key: certs.server.key,
      clientCa: certs.ca.cert,
      clientCrl: certs.crl,
    }),
  );
  if (isPgwardenError(options)) throw new Error(options.message);
  const ctx = buildSecureContext(options);
  if (isPgwardenError(ctx)) throw new Error(ctx.message);
  return ctx;
};

const failure = (o: TlsSession | PgwardenError | undefined): PgwardenError => {
  if (o === undefined || !isPgwardenError(o)) throw new Error("expected a failure");
  return o;
};
const session = (o: TlsSession | PgwardenError | undefined): TlsSession => {
  if (o === undefined || isPgwardenError(o)) throw new Error(`expected a session, got ${o?.message}`);
  return o;
};

/** Node as a PostgreSQL client: SSLRequest, expect S, then TLS on the same socket. */
const pgTlsClient = (
  port: number,
  options: tls.ConnectionOptions = {},
): Promise<{ socket: tls.TLSSocket; line: string }> =>
  new Promise((resolve, reject) => {
    const raw = net.connect(port, "127.0.0.1", () => raw.write(SSL_REQUEST));
    raw.once("error", reject);
    raw.once("data", (b) => {
      if (b.toString() !== "S") return reject(new Error(`answer ${b.toString()}`));
      const socket = tls.connect({
        socket: raw,
        ca: readFileSync(certs.ca.cert),
        servername: "localhost",
        ...options,
      });
      let text = "";
      socket.on("data", (d) => {
        text += d.toString();
        if (text.includes("\n")) resolve({ socket, line: text.trim() });
      });
      socket.once("error", reject);
      socket.once("close", () => reject(new Error(`closed: ${text}`)));
    });
  });

const withClientCert = (pair: CertPair): tls.ConnectionOptions => ({
  cert: readFileSync(pair.cert),
  key: readFileSync(pair.key),
});

describe("startTlsOnSocket: client certificates (mTLS with CA bundle and CRL)", () => {
  let server: TlsTestServer;
  beforeAll(async () => {
    const ctx = mtlsContext();
    server = await startTlsTestServer(() => ctx, { requestCert: true });
  });
  afterAll(() => server?.close());

  it("accepts a good certificate and exposes its identity", async () => {
    const outcome = server.next();
    const { socket, line } = await pgTlsClient(server.port, withClientCert(certs.client));
    socket.destroy();
    expect(line).toMatch(/^ok TLSv1\.3 TLS_AES_256_GCM_SHA384 alice$/);
    const peer = session(await outcome).peer;
    expect(peer).toMatchObject({
      commonName: "alice",
      email: ["alice@example.com"],
      dns: ["alice.clients.example"],
      uri: ["spiffe://example.org/alice"],
    });
    expect(peer?.fingerprint256).toBe(new X509Certificate(readFileSync(certs.client.cert)).fingerprint256);
  });

  it("accepts a client without a certificate, with no peer identity (requireCert off)", async () => {
    const outcome = server.next();
    const { socket, line } = await pgTlsClient(server.port);
    socket.destroy();
    expect(line).toMatch(/ -$/);
    expect(session(await outcome).peer).toBeUndefined();
  });

  it.each([
    ["expired", certs.clientExpired, "CERT_HAS_EXPIRED"],
    ["revoked (CRL)", certs.clientRevoked, "CERT_REVOKED"],
    ["from an untrusted CA", certs.untrusted, "UNABLE_TO_VERIFY_LEAF_SIGNATURE"],
  ])("rejects a certificate that is %s", async (_name, pair, reason) => {
    const outcome = server.next();
    await expect(pgTlsClient(server.port, withClientCert(pair))).rejects.toThrow();
    const error = failure(await outcome);
    expect(error.code).toBe("PGW_TLS_CLIENT_CERT");
    expect(error.sqlstate).toBe("28000");
    expect(error.message).toContain(reason);
  });

  it("rejects a client without a certificate when requireCert is set", async () => {
    const ctx = mtlsContext();
    const strict = await startTlsTestServer(() => ctx, { requestCert: true, requireCert: true });
    try {
      const outcome = strict.next();
      await expect(pgTlsClient(strict.port)).rejects.toThrow();
      expect(failure(await outcome).message).toBe("no client certificate presented");
    } finally {
      await strict.close();
    }
  });

  it("openssl s_client with the revoked certificate gets no session either", async () => {
    const outcome = server.next();
    const result = await sClient(server.port, [
      "-cert",
      certs.clientRevoked.cert,
      "-key",
      certs.clientRevoked.key,
    ]);
    expect(result.stdout).not.toContain("ok TLS");
    expect(failure(await outcome).message).toContain("CERT_REVOKED");
  });
});

describe("startTlsOnSocket: negotiation", () => {
  let server: TlsTestServer;
  beforeAll(async () => {
    const ctx = mtlsContext();
    server = await startTlsTestServer(() => ctx);
  });
  afterAll(() => server?.close());

  it("direct TLS with ALPN postgresql works (bytes already read are replayed into the handshake)", async () => {
    const outcome = server.next();
    const result = await sClient(server.port, ["-alpn", "postgresql", "-CAfile", certs.ca.cert], true);
    expect(result.stdout).toContain("ALPN protocol: postgresql");
    expect(result.stdout).toMatch(/^ok TLSv1\.3 /m);
    expect(session(await outcome).alpn).toBe("postgresql");
  });

  it("direct TLS without ALPN is refused", async () => {
    const outcome = server.next();
    const result = await sClient(server.port, [], true);
    expect(result.stdout).not.toContain("ok TLS");
    expect(failure(await outcome).code).toBe("PGW_TLS_ALPN");
  });

  it("direct TLS offering only another ALPN protocol gets no session", async () => {
    const result = await sClient(server.port, ["-alpn", "http/1.1"], true);
    expect(result.stdout).not.toContain("ok TLS");
  });

  it("SSLRequest path accepts a client that sends ALPN postgresql too (libpq 17 does)", async () => {
    const { socket, line } = await pgTlsClient(server.port, { ALPNProtocols: ["postgresql"] });
    expect(socket.alpnProtocol).toBe("postgresql");
    socket.destroy();
    expect(line).toMatch(/^ok /);
  });

  it("plaintext pipelined after SSLRequest is a violation, reported before S is written", async () => {
    const outcome = server.next();
    const received = await new Promise<string>((resolve) => {
      const raw = net.connect(server.port, "127.0.0.1", () =>
        // SSLRequest and a StartupMessage in one segment: the CVE-2021-23214 injection shape.
        raw.write(Buffer.concat([SSL_REQUEST, Buffer.from([0, 0, 0, 9, 0, 3, 0, 0, 0])])),
      );
      let got = "";
      raw.on("data", (d) => {
        got += d.toString("latin1");
      });
      raw.on("close", () => resolve(got));
      raw.on("error", () => {});
    });
    expect(received).toBe("");
    const error = failure(await outcome);
    expect([error.code, error.sqlstate]).toEqual(["PGW_TLS_PIPELINED", "08P01"]);
  });

  it("times out a client that never completes the handshake", async () => {
    const ctx = mtlsContext();
    const slow = await startTlsTestServer(() => ctx, { handshakeTimeoutMs: 200 });
    const raw = net.connect(slow.port, "127.0.0.1", () => raw.write(SSL_REQUEST));
    raw.on("error", () => {});
    try {
      const started = Date.now();
      expect(failure(await slow.next()).code).toBe("PGW_TLS_TIMEOUT");
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      raw.destroy();
      await slow.close();
    }
  });

  it("direct negotiation refuses buffered bytes that are not a TLS record", async () => {
    const socket = new net.Socket();
    const outcome = await startTlsOnSocket(socket, {
      context: mtlsContext(),
      negotiation: "direct",
      buffered: Buffer.from("GET / HTTP/1.1\r\n"),
      handshakeTimeoutMs: 100,
    });
    expect(failure(outcome).code).toBe("PGW_PROTOCOL");
  });
});

describe("ReloadableContext", () => {
  let dir: string;
  let ctx: ReloadableContext;
  let server: TlsTestServer;
  const paths = () => ({ cert: join(dir, "server.crt"), key: join(dir, "server.key") });
  const install = (pair: CertPair) => {
    copyFileSync(pair.cert, paths().cert);
    copyFileSync(pair.key, paths().key);
  };
  const fingerprint = (pair: CertPair) => new X509Certificate(readFileSync(pair.cert)).fingerprint256;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "pgwarden-reload-"));
    install(certs.server);
    const made = createReloadableContext(() =>
      clientLegContextOptions(clientTlsConfig({ mode: "require", ...paths() })),
    );
    if (isPgwardenError(made)) throw new Error(made.message);
    ctx = made;
    server = await startTlsTestServer(() => ctx.current(), { keepOpen: true });
  });
  afterAll(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("swaps the certificate for new connections while an open connection keeps working", async () => {
    const first = await pgTlsClient(server.port);
    expect(first.socket.getPeerX509Certificate()?.fingerprint256).toBe(fingerprint(certs.server));

    install(certs.server2);
    expect(ctx.reload()).toEqual({ reloaded: true, generation: 1 });

    const second = await pgTlsClient(server.port);
    expect(second.socket.getPeerX509Certificate()?.fingerprint256).toBe(fingerprint(certs.server2));
    second.socket.destroy();

    // The first session still runs on its original context.
    const echoed = new Promise<string>((r) => first.socket.once("data", (d) => r(d.toString())));
    first.socket.write("still here");
    expect(await echoed).toBe("still here");
    first.socket.destroy();
  });

  it("keeps the current context and reports a typed error when the new files are bad", async () => {
    const before = ctx.current();
    writeFileSync(paths().key, "not a key");
    const outcome = ctx.reload();
    expect(outcome.reloaded).toBe(false);
    expect(!outcome.reloaded && outcome.error.code).toBe("PGW_TLS_CONFIG");
    expect(ctx.current()).toBe(before);
    const still = await pgTlsClient(server.port);
    expect(still.socket.getPeerX509Certificate()?.fingerprint256).toBe(fingerprint(certs.server2));
    still.socket.destroy();
  });

  it("refuses to start from unreadable files", () => {
    const made = createReloadableContext(() =>
      clientLegContextOptions(
        clientTlsConfig({ mode: "require", cert: join(dir, "missing.crt"), key: paths().key }),
      ),
    );
    expect(isPgwardenError(made) && made.code).toBe("PGW_TLS_CONFIG");
  });
});
