import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type UpstreamTlsConfig, upstreamTlsConfig } from "../../src/adapters/tls/config.ts";
import { buildSecureContext, upstreamLegContextOptions } from "../../src/adapters/tls/policy.ts";
import {
  connectUpstreamTls,
  negotiateUpstreamTls,
  type UpstreamTlsSession,
} from "../../src/adapters/tls/upstreamTls.ts";
import { tlsServerEndPoint } from "../../src/auth/channelBinding.ts";
import {
  type ChannelBindingPolicy,
  createScramClient,
  selectScramOptions,
} from "../../src/auth/scramClient.ts";
import type { ScramChannelBinding } from "../../src/auth/scramServer.ts";
import { isPgwardenError, type PgwardenError } from "../../src/errors.ts";
import { decodeAuthentication } from "../../src/protocol/backend.ts";
import { encodeSASLInitialResponse, encodeSASLResponse } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { errorFields, messageReader } from "./messages.ts";
import { removeTemplate, startTlsPostgres, type TlsPostgres } from "./pg15.ts";

const certs = testCerts();

let pgRsa: TlsPostgres;
let pgEcdsa: TlsPostgres;
let pgWrongHost: TlsPostgres;
let pgNoSsl: TlsPostgres;

beforeAll(async () => {
  // The first start runs initdb; the others copy its cluster.
  pgRsa = await startTlsPostgres(certs.server);
  [pgEcdsa, pgWrongHost, pgNoSsl] = await Promise.all([
    startTlsPostgres(certs.serverEcdsa),
    startTlsPostgres(certs.wrongHost),
    startTlsPostgres(undefined),
  ]);
}, 120_000);

afterAll(async () => {
  await Promise.all([pgRsa, pgEcdsa, pgWrongHost, pgNoSsl].map((pg) => pg?.stop()));
  removeTemplate();
});

const connect = (pg: TlsPostgres, config: Partial<UpstreamTlsConfig>) =>
  connectUpstreamTls(
    { host: "127.0.0.1", port: pg.port },
    upstreamTlsConfig({ ca: certs.ca.cert, ...config }),
  );

const ok = (s: UpstreamTlsSession | PgwardenError): UpstreamTlsSession => {
  if (isPgwardenError(s)) throw new Error(`${s.code}: ${s.message}`);
  return s;
};
const refused = (s: UpstreamTlsSession | PgwardenError): PgwardenError => {
  if (!isPgwardenError(s)) {
    s.socket.destroy();
    throw new Error("expected the connection to be refused");
  }
  return s;
};

/** SCRAM login as the superuser over `stream`; "ok" after AuthenticationOk, else the server's error. */
const login = async (
  stream: Duplex,
  password: string,
  binding: ScramChannelBinding | undefined,
  policy: ChannelBindingPolicy,
): Promise<"ok" | { code?: string; message?: string } | PgwardenError> => {
  const reader = messageReader(stream);
  const auth = async () => {
    const msg = await reader.next();
    if (msg[0] === 0x45) return errorFields(msg);
    const a = decodeAuthentication(msg);
    if (isPgwardenError(a)) throw new Error(a.message);
    return a;
  };
  stream.write(
    encodeStartup(
      new Map([
        ["user", "postgres"],
        ["database", "postgres"],
      ]),
    ),
  );
  const offer = await auth();
  if (!("kind" in offer) || offer.kind !== "SASL")
    throw new Error(`expected SASL, got ${JSON.stringify(offer)}`);
  const options = selectScramOptions(offer.mechanisms, binding, policy);
  if (isPgwardenError(options)) return options;
  const client = createScramClient(password, options);
  stream.write(encodeSASLInitialResponse(client.mechanism, Buffer.from(client.clientFirst())));
  const cont = await auth();
  if (!("kind" in cont)) return cont;
  if (cont.kind !== "SASLContinue") throw new Error(cont.kind);
  const final = client.handleServerFirst(cont.data.toString());
  if (isPgwardenError(final)) return final;
  stream.write(encodeSASLResponse(Buffer.from(final)));
  const fin = await auth();
  if (!("kind" in fin)) return fin;
  if (fin.kind !== "SASLFinal") throw new Error(fin.kind);
  const verified = client.verifyServerFinal(fin.data.toString());
  if (isPgwardenError(verified)) return verified;
  const done = await auth();
  return "kind" in done && done.kind === "Ok" ? "ok" : (done as { code?: string });
};

const bindingOf = (session: UpstreamTlsSession): ScramChannelBinding => {
  const data = tlsServerEndPoint(session.serverCertificate);
  if (isPgwardenError(data)) throw new Error(data.message);
  return { type: "tls-server-end-point", data };
};

describe("upstream TLS against a real PostgreSQL (Debian server, ssl=on)", () => {
  it("verify-full: chain and IP SAN check pass; it is really PostgreSQL's certificate", async () => {
    const session = ok(await connect(pgRsa, { mode: "verify-full" }));
    expect(session.verified).toBe(true);
    expect(session.protocol).toBe("TLSv1.3");
    expect(session.cipher).toBe("TLS_AES_256_GCM_SHA384");
    expect(new X509Certificate(session.serverCertificate).fingerprint256).toBe(
      new X509Certificate(readFileSync(certs.server.cert)).fingerprint256,
    );
    expect(await login(session.socket, pgRsa.password, undefined, "disable")).toBe("ok");
    session.socket.destroy();
  });

  it("verify-full with servername localhost checks that name and sends it as SNI", async () => {
    const session = ok(await connect(pgRsa, { mode: "verify-full", servername: "localhost" }));
    expect(session.socket.servername).toBe("localhost");
    session.socket.destroy();
  });

  it("verify-full fails closed when the certificate names another host", async () => {
    const error = refused(await connect(pgWrongHost, { mode: "verify-full" }));
    expect(error.code).toBe("PGW_UPSTREAM_TLS");
    expect(error.message).toContain("ERR_TLS_CERT_ALTNAME_INVALID");
  });

  it("verify-full fails when the configured servername is not in the certificate", async () => {
    const error = refused(await connect(pgRsa, { mode: "verify-full", servername: "db.example.org" }));
    expect(error.message).toContain("ERR_TLS_CERT_ALTNAME_INVALID");
  });

  it("verify-ca accepts the wrong-host certificate (chain only) but not an untrusted CA", async () => {
    ok(await connect(pgWrongHost, { mode: "verify-ca" })).socket.destroy();
    const error = refused(await connect(pgRsa, { mode: "verify-ca", ca: certs.untrustedCa.cert }));
    expect(error.message).toContain("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });

  it("require encrypts without verifying (untrusted CA accepted), still TLS and logs in", async () => {
    const session = ok(await connect(pgRsa, { mode: "require", ca: certs.untrustedCa.cert }));
    expect(session.verified).toBe(false);
    expect(session.socket.encrypted).toBe(true);
    expect(await login(session.socket, pgRsa.password, undefined, "disable")).toBe("ok");
    session.socket.destroy();
  });

  it("a server answering N (ssl=off) fails closed in every mode: no plaintext fallback", async () => {
    for (const mode of ["require", "verify-ca", "verify-full"] as const) {
      const error = refused(await connect(pgNoSsl, { mode }));
      expect([error.code, error.message]).toEqual([
        "PGW_UPSTREAM_TLS",
        "upstream server does not support TLS",
      ]);
    }
  });

  it("direct TLS against PostgreSQL 15 (no direct support) fails cleanly", async () => {
    const error = refused(
      await connect(pgRsa, { mode: "verify-full", direct: true, handshakeTimeoutMs: 5000 }),
    );
    expect(error.code).toBe("PGW_UPSTREAM_TLS");
    expect(error.message).toMatch(/handshake failed|closed the connection/);
  });

  it("disable is not a TLS mode for this function", async () => {
    expect(refused(await connect(pgRsa, { mode: "disable" })).code).toBe("PGW_UPSTREAM_TLS");
  });
});

describe("SCRAM-SHA-256-PLUS upstream: our tls-server-end-point equals PostgreSQL's", () => {
  it.each([
    ["an RSA certificate signed with SHA-256", () => pgRsa],
    ["an ECDSA certificate signed with SHA-384", () => pgEcdsa],
  ])("logs in with channel binding required, for %s", async (_name, pg) => {
    const session = ok(await connect(pg(), { mode: "verify-full" }));
    expect(await login(session.socket, pg().password, bindingOf(session), "require")).toBe("ok");
    session.socket.destroy();
  });

  it("a tampered binding (another certificate's hash) is refused by PostgreSQL", async () => {
    const session = ok(await connect(pgRsa, { mode: "verify-full" }));
    const other = tlsServerEndPoint(new X509Certificate(readFileSync(certs.server2.cert)).raw);
    if (isPgwardenError(other)) throw new Error(other.message);
    const result = await login(
      session.socket,
      pgRsa.password,
      { type: "tls-server-end-point", data: other },
      "require",
    );
    expect(result).toMatchObject({ code: "28000", message: "SCRAM channel binding check failed" });
    session.socket.destroy();
  });

  it("the wrong password still fails with binding (the binding is not a password bypass)", async () => {
    const session = ok(await connect(pgRsa, { mode: "verify-full" }));
    const result = await login(session.socket, "not-the-password", bindingOf(session), "require");
    expect(result).toMatchObject({ code: "28P01" });
    session.socket.destroy();
  });
});

describe("upstream negotiation against a fake server", () => {
  const fake = async (answer: Buffer) => {
    const server = net.createServer((s) => {
      s.on("error", () => {});
      s.once("data", () => s.write(answer));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return { server, port: (server.address() as net.AddressInfo).port };
  };
  const negotiate = async (port: number) => {
    const socket = net.connect(port, "127.0.0.1");
    await new Promise((r) => socket.once("connect", r));
    const options = upstreamLegContextOptions(upstreamTlsConfig({ ca: certs.ca.cert }));
    if (isPgwardenError(options)) throw new Error(options.message);
    const context = buildSecureContext(options);
    if (isPgwardenError(context)) throw new Error(context.message);
    return negotiateUpstreamTls(socket, {
      mode: "verify-full",
      context,
      host: "127.0.0.1",
      handshakeTimeoutMs: 2000,
    });
  };

  it.each([
    [
      "S followed by plaintext (CVE-2021-23222)",
      Buffer.from("SE\0\0\0\x04"),
      "received unencrypted data after SSL response",
    ],
    ["an ErrorResponse", Buffer.from("E\0\0\0\x04"), "answered SSLRequest with an error"],
  ])("fails closed on %s", async (_name, answer, message) => {
    const { server, port } = await fake(answer);
    try {
      expect(refused(await negotiate(port)).message).toContain(message);
    } finally {
      server.close();
    }
  });

  it("times out a server that never answers", async () => {
    const held: net.Socket[] = [];
    const server = net.createServer((s) => {
      held.push(s);
      s.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const error = refused(await negotiate((server.address() as net.AddressInfo).port));
      expect(error.message).toBe("upstream TLS negotiation timed out");
    } finally {
      for (const s of held) s.destroy();
      server.close();
    }
  });
});
