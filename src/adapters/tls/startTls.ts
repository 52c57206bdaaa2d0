import type * as net from "node:net";
import * as tls from "node:tls";
import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../../errors.ts";
import { type CertificateIdentity, certificateIdentity } from "./certificateIdentity.ts";

/** The ALPN protocol PostgreSQL 17 defines; direct TLS must negotiate it. */
export const POSTGRESQL_ALPN = "postgresql";

/** First byte of a TLS record carrying a handshake: a direct-TLS client starts with it. */
export const TLS_HANDSHAKE_RECORD = 0x16;

/** A client-leg TLS session once the handshake is done. */
export interface TlsSession {
  readonly socket: tls.TLSSocket;
  /** "TLSv1.3" or "TLSv1.2". */
  readonly protocol: string;
  /** IANA name of the negotiated suite. */
  readonly cipher: string;
  readonly alpn: string | undefined;
  /** The verified client certificate, when the client sent one. */
  readonly peer: CertificateIdentity | undefined;
  /** DER of the certificate pgwarden presented: the input of SCRAM tls-server-end-point binding. */
  readonly localCertificate: Buffer | undefined;
}

export interface StartTlsOptions {
  readonly context: tls.SecureContext;
  /**
   * "ssl-request": the client sent SSLRequest; pgwarden answers `S`, then the handshake runs.
   * "direct": the client's first byte was 0x16 (PostgreSQL 17 sslnegotiation=direct); ALPN
   * `postgresql` is then required.
   */
  readonly negotiation: "ssl-request" | "direct";
  /**
   * Bytes the caller already read from the socket past the negotiation point. After SSLRequest
   * they must be empty (plaintext pipelined before the handshake is an injection attempt,
   * CVE-2021-23214); for direct TLS they are the start of the ClientHello.
   */
  readonly buffered?: Buffer;
  /** Ask for a client certificate and verify it when sent (the context must hold the CA). */
  readonly requestCert?: boolean;
  /** Refuse clients that send no certificate (only with requestCert). */
  readonly requireCert?: boolean;
  readonly handshakeTimeoutMs: number;
}

const handshakeError = (message: string): PgwardenError =>
  pgwardenError("PGW_TLS_HANDSHAKE", SqlState.connectionFailure, message);

/**
 * Turns an accepted plaintext socket into a TLS server socket on the same connection. Resolves
 * with the session or a typed failure; on failure the socket is destroyed unless the failure is
 * reported before anything was written (pipelined bytes), so the caller can still send an
 * ErrorResponse in plaintext.
 */
export const startTlsOnSocket = (
  socket: net.Socket,
  options: StartTlsOptions,
): Promise<TlsSession | PgwardenError> => {
  const buffered = options.buffered ?? Buffer.alloc(0);
  if (options.negotiation === "ssl-request" && buffered.length > 0) {
    return Promise.resolve(
      pgwardenError(
        "PGW_TLS_PIPELINED",
        SqlState.protocolViolation,
        "received unencrypted data after SSL request",
      ),
    );
  }
  if (options.negotiation === "direct" && buffered[0] !== TLS_HANDSHAKE_RECORD) {
    return Promise.resolve(protocolError("direct TLS connection does not start with a TLS handshake"));
  }
  return new Promise((resolve) => {
    socket.pause();
    if (options.negotiation === "ssl-request") socket.write("S");
    // The TLS layer reads from the socket's handle; bytes already read are handed back first.
    if (buffered.length > 0) socket.unshift(buffered);
    const secure = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: options.context,
      ALPNProtocols: [POSTGRESQL_ALPN],
      requestCert: options.requestCert === true,
      // Verification is decided below, after the handshake, so the failure is typed.
      rejectUnauthorized: false,
    });
    let settled = false;
    const finish = (outcome: TlsSession | PgwardenError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      secure.off("error", onError);
      if ("_tag" in outcome) secure.destroy();
      resolve(outcome);
    };
    const onError = (e: Error & { code?: string }) =>
      finish(handshakeError(`TLS handshake failed: ${e.code ?? e.message}`));
    const timer = setTimeout(
      () => finish(pgwardenError("PGW_TLS_TIMEOUT", SqlState.connectionFailure, "TLS handshake timed out")),
      options.handshakeTimeoutMs,
    );
    secure.once("error", onError);
    secure.once("close", () => finish(handshakeError("connection closed during the TLS handshake")));
    secure.once("secure", () => finish(sessionOf(secure, options)));
  });
};

const sessionOf = (secure: tls.TLSSocket, options: StartTlsOptions): TlsSession | PgwardenError => {
  const alpn =
    secure.alpnProtocol === false || secure.alpnProtocol === null ? undefined : secure.alpnProtocol;
  if (options.negotiation === "direct" && alpn !== POSTGRESQL_ALPN) {
    return pgwardenError(
      "PGW_TLS_ALPN",
      SqlState.protocolViolation,
      `direct TLS connection requires ALPN protocol "${POSTGRESQL_ALPN}"`,
    );
  }
  let peer: CertificateIdentity | undefined;
  if (options.requestCert === true) {
    const presented = secure.getPeerX509Certificate();
    if (presented === undefined) {
      if (options.requireCert === true) return clientCertError("no client certificate presented");
    } else {
      const reason = verifyResult(secure);
      if (reason !== undefined) return clientCertError(`client certificate rejected: ${reason}`);
      peer = certificateIdentity(presented.raw);
    }
  }
  const cipher = secure.getCipher();
  return {
    socket: secure,
    protocol: secure.getProtocol() ?? "unknown",
    cipher: cipher.standardName ?? cipher.name,
    alpn,
    peer,
    localCertificate: secure.getX509Certificate()?.raw,
  };
};

/**
 * OpenSSL's verdict on the client chain (issuer, validity, CRL). Node computes `authorized` only
 * for sockets a tls.Server accepted, so read the verify result the same way tls.Server does; if
 * that handle API ever goes away, every certificate is refused (fail closed), never accepted.
 */
const verifyResult = (secure: tls.TLSSocket): string | undefined => {
  const handle = (
    secure as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } }
  )._handle;
  if (typeof handle?.verifyError !== "function") return "verification result unavailable";
  const error = handle.verifyError();
  return error === null || error === undefined ? undefined : (error.code ?? error.message);
};

const clientCertError = (message: string): PgwardenError =>
  pgwardenError("PGW_TLS_CLIENT_CERT", SqlState.invalidAuthorization, message);
