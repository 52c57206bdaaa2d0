import * as net from "node:net";
import { isIP } from "node:net";
import * as tls from "node:tls";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../../errors.ts";
import type { UpstreamTlsConfig, UpstreamTlsMode } from "./config.ts";
import { buildSecureContext, upstreamLegContextOptions } from "./policy.ts";
import { POSTGRESQL_ALPN } from "./startTls.ts";

/** SSLRequest: Int32 length 8, Int32 code 80877103. */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** An encrypted upstream connection, ready for the StartupMessage. */
export interface UpstreamTlsSession {
  readonly socket: tls.TLSSocket;
  readonly protocol: string;
  readonly cipher: string;
  readonly alpn: string | undefined;
  /** DER of PostgreSQL's certificate: the input of SCRAM-SHA-256-PLUS tls-server-end-point. */
  readonly serverCertificate: Buffer;
  /** False only in `require` mode, where the chain is not checked. */
  readonly verified: boolean;
}

export interface UpstreamTlsOptions {
  readonly mode: Exclude<UpstreamTlsMode, "disable">;
  /** Built from `upstreamLegContextOptions`: CA pinning, client certificate, cipher policy. */
  readonly context: tls.SecureContext;
  /** The host pgwarden connected to; the name checked in verify-full unless `servername` is set. */
  readonly host: string;
  readonly servername?: string;
  /** PostgreSQL 17+ direct TLS: no SSLRequest, ALPN "postgresql" required. */
  readonly direct?: boolean;
  readonly handshakeTimeoutMs: number;
}

export const upstreamTlsError = (message: string): PgwardenError =>
  pgwardenError("PGW_UPSTREAM_TLS", SqlState.connectionFailure, message);

/**
 * Sends SSLRequest and reads PostgreSQL's one-byte answer. Anything but a lone `S` fails closed:
 * `N` (no TLS), an ErrorResponse (`E`, servers before 7.x-style negotiation) or extra bytes after
 * `S`, which a man in the middle could use to inject plaintext (CVE-2021-23222).
 */
const requestTls = (socket: net.Socket, timeoutMs: number): Promise<true | PgwardenError> =>
  new Promise((resolve) => {
    const finish = (outcome: true | PgwardenError) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
      resolve(outcome);
    };
    const onData = (chunk: Buffer) => {
      socket.pause();
      const answer = chunk[0];
      if (answer === 0x53 /* S */ && chunk.length === 1) return finish(true);
      if (answer === 0x53) return finish(upstreamTlsError("received unencrypted data after SSL response"));
      if (answer === 0x4e /* N */) return finish(upstreamTlsError("upstream server does not support TLS"));
      return finish(upstreamTlsError("upstream server answered SSLRequest with an error"));
    };
    const onError = (e: NodeJS.ErrnoException) =>
      finish(upstreamTlsError(`upstream connection failed: ${e.code ?? e.message}`));
    const onClose = () => finish(upstreamTlsError("upstream closed the connection during TLS negotiation"));
    const timer = setTimeout(() => finish(upstreamTlsError("upstream TLS negotiation timed out")), timeoutMs);
    socket.on("data", onData);
    socket.once("error", onError);
    socket.once("close", onClose);
    socket.write(SSL_REQUEST);
    socket.resume();
  });

/** verify-full checks the name; verify-ca only the chain; require nothing (encryption only). */
const identityCheck = (mode: UpstreamTlsOptions["mode"], name: string): tls.ConnectionOptions => {
  switch (mode) {
    case "verify-full":
      return {
        rejectUnauthorized: true,
        checkServerIdentity: (_host, cert) => tls.checkServerIdentity(name, cert),
      };
    case "verify-ca":
      return { rejectUnauthorized: true, checkServerIdentity: () => undefined };
    case "require":
      return { rejectUnauthorized: false };
  }
};

/**
 * TLS on an already connected socket to PostgreSQL: SSLRequest → `S` → handshake, or with `direct`
 * the handshake at once. Never falls back to plaintext; on failure the socket is destroyed.
 */
export const negotiateUpstreamTls = async (
  socket: net.Socket,
  options: UpstreamTlsOptions,
): Promise<UpstreamTlsSession | PgwardenError> => {
  if (options.direct !== true) {
    const answer = await requestTls(socket, options.handshakeTimeoutMs);
    if (isPgwardenError(answer)) {
      socket.destroy();
      return answer;
    }
  }
  const name = options.servername ?? options.host;
  return new Promise((resolve) => {
    const secure = tls.connect({
      socket,
      secureContext: options.context,
      // RFC 6066: SNI carries host names only.
      ...(isIP(name) === 0 ? { servername: name } : {}),
      ALPNProtocols: [POSTGRESQL_ALPN],
      ...identityCheck(options.mode, name),
    });
    const finish = (outcome: UpstreamTlsSession | PgwardenError) => {
      clearTimeout(timer);
      secure.off("error", onError);
      secure.off("close", onClose);
      if (isPgwardenError(outcome)) secure.destroy();
      resolve(outcome);
    };
    const onError = (e: NodeJS.ErrnoException) =>
      finish(upstreamTlsError(`upstream TLS handshake failed: ${e.code ?? e.message}`));
    const onClose = () => finish(upstreamTlsError("upstream closed the connection during the TLS handshake"));
    const timer = setTimeout(
      () => finish(upstreamTlsError("upstream TLS handshake timed out")),
      options.handshakeTimeoutMs,
    );
    secure.once("error", onError);
    secure.once("close", onClose);
    secure.once("secureConnect", () => {
      const alpn = typeof secure.alpnProtocol === "string" ? secure.alpnProtocol : undefined;
      if (options.direct === true && alpn !== POSTGRESQL_ALPN) {
        return finish(
          upstreamTlsError(`upstream did not negotiate ALPN "${POSTGRESQL_ALPN}" for direct TLS`),
        );
      }
      const serverCertificate = secure.getPeerX509Certificate()?.raw;
      if (serverCertificate === undefined) return finish(upstreamTlsError("upstream sent no certificate"));
      const cipher = secure.getCipher();
      finish({
        socket: secure,
        protocol: secure.getProtocol() ?? "unknown",
        cipher: cipher.standardName ?? cipher.name,
        alpn,
        serverCertificate,
        verified: options.mode !== "require",
      });
    });
  });
};

/**
 * Connects to PostgreSQL at host:port and negotiates TLS as `config` says. For `disable` use a
 * plain socket instead; this function only ever returns an encrypted one.
 *
 * @example
 * const tlsSession = await connectUpstreamTls({ host, port }, config.upstream.tls);
 * if (isPgwardenError(tlsSession)) fail(tlsSession);
 * else writeStartup(tlsSession.socket);
 */
export const connectUpstreamTls = async (
  target: { readonly host: string; readonly port: number; readonly connectTimeoutMs?: number },
  config: UpstreamTlsConfig,
): Promise<UpstreamTlsSession | PgwardenError> => {
  if (config.mode === "disable") return upstreamTlsError("upstream.tls.mode is disable");
  const contextOptions = upstreamLegContextOptions(config);
  if (isPgwardenError(contextOptions)) return contextOptions;
  const context = buildSecureContext(contextOptions);
  if (isPgwardenError(context)) return context;
  const socket = net.connect({ host: target.host, port: target.port });
  const connected = await new Promise<true | PgwardenError>((resolve) => {
    const timer = setTimeout(
      () => resolve(upstreamTlsError("upstream connect timed out")),
      target.connectTimeoutMs ?? config.handshakeTimeoutMs,
    );
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(true);
    });
    socket.once("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(upstreamTlsError(`upstream connection failed: ${e.code ?? e.message}`));
    });
  });
  if (isPgwardenError(connected)) {
    socket.destroy();
    return connected;
  }
  return negotiateUpstreamTls(socket, {
    mode: config.mode,
    context,
    host: target.host,
    ...(config.servername === undefined ? {} : { servername: config.servername }),
    direct: config.direct,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
  });
};
