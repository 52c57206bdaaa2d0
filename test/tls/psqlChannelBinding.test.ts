import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import * as net from "node:net";
import type * as tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { clientTlsConfig } from "../../src/adapters/tls/config.ts";
import { buildSecureContext, clientLegContextOptions } from "../../src/adapters/tls/policy.ts";
import { startTlsOnSocket } from "../../src/adapters/tls/startTls.ts";
import { tlsServerEndPoint } from "../../src/auth/channelBinding.ts";
import {
  createScramServer,
  type ScramChannelBinding,
  type ScramFailureReason,
  type ScramMechanism,
  scramMechanisms,
} from "../../src/auth/scramServer.ts";
import { deriveScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import {
  encodeAuthentication,
  encodeBackendKeyData,
  encodeError,
  encodeParameterStatus,
  encodeReadyForQuery,
} from "../../src/protocol/backend.ts";
import { decodeSASLInitialResponse, decodeSASLResponse } from "../../src/protocol/frontend.ts";
import { type CertPair, testCerts } from "../support/certs.ts";
import { messageReader } from "./messages.ts";

const certs = testCerts();
const PASSWORD = "psql-binding-password";
const verifier = deriveScramVerifier(PASSWORD, { salt: Buffer.alloc(16, 3), iterations: 4096 });

interface Seen {
  mechanism?: ScramMechanism;
  reason?: ScramFailureReason | undefined;
  authenticated: boolean;
}

/**
 * A PostgreSQL front door built only from this branch's pieces: SSLRequest → startTlsOnSocket →
 * SCRAM (-PLUS over TLS) with the binding computed from the certificate the session presented.
 * `bindingFrom` replaces that certificate's hash, to play a tampered binding.
 */
const frontDoor = async (options: { bindingFrom?: CertPair; tls: boolean }) => {
  const seen: Seen[] = [];
  const contextOptions = clientLegContextOptions(
    clientTlsConfig({ mode: "require", cert: certs.server.cert, key: certs.server.key }),
  );
  if (isPgwardenError(contextOptions)) throw new Error(contextOptions.message);
  const context = buildSecureContext(contextOptions);
  if (isPgwardenError(context)) throw new Error(context.message);

  const serve = async (raw: net.Socket) => {
    const first = await new Promise<Buffer>((r) => raw.once("data", r));
    let stream: net.Socket | tls.TLSSocket = raw;
    let binding: ScramChannelBinding | undefined;
    if (options.tls) {
      if (!first.subarray(0, 8).equals(Buffer.from([0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]))) return raw.destroy();
      const session = await startTlsOnSocket(raw, {
        context,
        negotiation: "ssl-request",
        buffered: first.subarray(8),
        handshakeTimeoutMs: 5000,
      });
      if (isPgwardenError(session)) return raw.destroy();
      stream = session.socket;
      const der =
        options.bindingFrom === undefined
          ? session.localCertificate!
          : new X509Certificate(readFileSync(options.bindingFrom.cert)).raw;
      const data = tlsServerEndPoint(der);
      if (isPgwardenError(data)) throw new Error(data.message);
      binding = { type: "tls-server-end-point", data };
    } else if (first.length === 8) {
      raw.write("N");
    }
    const reader = messageReader(stream);
    if (options.tls || first.length === 8) await reader.startup();
    stream.write(encodeAuthentication({ kind: "SASL", mechanisms: scramMechanisms(binding) }));
    const init = decodeSASLInitialResponse(await reader.next());
    if (isPgwardenError(init)) throw new Error(init.message);
    const record: Seen = { mechanism: init.mechanism as ScramMechanism, authenticated: false };
    seen.push(record);
    const scram = createScramServer(verifier, {
      user: "alice",
      mockSecret: Buffer.alloc(32, 1),
      mechanism: init.mechanism as ScramMechanism,
      ...(binding === undefined ? {} : { channelBinding: binding }),
    });
    const fatal = (code: string, message: string) => {
      record.reason = scram.failureReason();
      stream.end(encodeError({ severity: "FATAL", code, message }));
    };
    const serverFirst = scram.handleClientFirst(init.data?.toString() ?? "");
    if (isPgwardenError(serverFirst)) return fatal(serverFirst.sqlstate, serverFirst.message);
    stream.write(encodeAuthentication({ kind: "SASLContinue", data: Buffer.from(serverFirst) }));
    const outcome = scram.handleClientFinal(decodeSASLResponse(await reader.next()).toString());
    if (isPgwardenError(outcome)) return fatal(outcome.sqlstate, outcome.message);
    record.authenticated = true;
    stream.write(
      Buffer.concat([
        encodeAuthentication({ kind: "SASLFinal", data: Buffer.from(outcome.serverFinal) }),
        encodeAuthentication({ kind: "Ok" }),
        encodeParameterStatus("server_version", "15.0"),
        encodeParameterStatus("client_encoding", "UTF8"),
        encodeBackendKeyData({ processId: 1, secret: Buffer.alloc(4, 1) }),
        encodeReadyForQuery("I"),
      ]),
    );
    // Every Query gets EmptyQueryResponse; Terminate ends the session.
    for (;;) {
      const msg = await reader.next().catch(() => undefined);
      if (msg === undefined || msg[0] === 0x58) return stream.end();
      if (msg[0] === 0x51)
        stream.write(Buffer.concat([Buffer.from([0x49, 0, 0, 0, 4]), encodeReadyForQuery("I")]));
    }
  };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((raw) => {
    sockets.add(raw);
    raw.on("close", () => sockets.delete(raw));
    raw.on("error", () => {});
    serve(raw).catch(() => raw.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
};

const psql = (port: number, params: string): Promise<{ code: number; stderr: string }> =>
  new Promise((resolve) => {
    const dsn = `host=127.0.0.1 port=${port} user=alice dbname=app gssencmode=disable ${params}`;
    execFile(
      "psql",
      ["-X", "-w", dsn, "-c", "select 1"],
      {
        env: { ...process.env, PGPASSWORD: PASSWORD, PGSSLCERT: "/nonexistent", PGSSLKEY: "/nonexistent" },
        timeout: 15_000,
      },
      (error, _stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stderr }),
    );
  });

describe("psql (libpq) against SCRAM-SHA-256-PLUS served by startTlsOnSocket + scramServer", () => {
  let honest: Awaited<ReturnType<typeof frontDoor>>;
  let tampered: Awaited<ReturnType<typeof frontDoor>>;
  let plaintext: Awaited<ReturnType<typeof frontDoor>>;
  beforeAll(async () => {
    honest = await frontDoor({ tls: true });
    tampered = await frontDoor({ tls: true, bindingFrom: certs.server2 });
    plaintext = await frontDoor({ tls: false });
  });
  afterAll(async () => {
    await Promise.all([honest?.close(), tampered?.close(), plaintext?.close()]);
  });

  const verifyFull = `sslmode=verify-full sslrootcert=${certs.ca.cert}`;

  it("channel_binding=require succeeds: libpq's certificate hash equals ours", async () => {
    const result = await psql(honest.port, `${verifyFull} channel_binding=require`);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(honest.seen.at(-1)).toEqual({ mechanism: "SCRAM-SHA-256-PLUS", authenticated: true });
  });

  it("channel_binding=prefer picks -PLUS over TLS too", async () => {
    expect((await psql(honest.port, "sslmode=require")).code).toBe(0);
    expect(honest.seen.at(-1)?.mechanism).toBe("SCRAM-SHA-256-PLUS");
  });

  it("channel_binding=disable over TLS uses plain SCRAM and is accepted", async () => {
    expect((await psql(honest.port, "sslmode=require channel_binding=disable")).code).toBe(0);
    expect(honest.seen.at(-1)).toEqual({ mechanism: "SCRAM-SHA-256", authenticated: true });
  });

  it("a binding that does not match the certificate the client saw fails", async () => {
    const result = await psql(tampered.port, `${verifyFull} channel_binding=require`);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('password authentication failed for user "alice"');
    expect(tampered.seen.at(-1)).toMatchObject({ authenticated: false, reason: "channel-binding-mismatch" });
  });

  it("on a plaintext leg -PLUS is not offered, and psql channel_binding=require refuses", async () => {
    const result = await psql(plaintext.port, "sslmode=disable channel_binding=require");
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/channel binding/);
    expect((await psql(plaintext.port, "sslmode=disable")).code).toBe(0);
    expect(plaintext.seen.at(-1)).toEqual({ mechanism: "SCRAM-SHA-256", authenticated: true });
  });
});
