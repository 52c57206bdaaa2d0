import type * as net from "node:net";
import * as tls from "node:tls";
import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../../errors.ts";
import { encodeError } from "../../protocol/backend.ts";
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

/** How long a refused client may take to read the refusal and close before its socket is destroyed. */
export const REFUSAL_GRACE_MS = 250;

/**
 * Ends a TLS session refused after its handshake completed: `close_notify` (and, for a client
 * certificate, a FATAL ErrorResponse first, as the client is already reading inside TLS), then
 * the socket is destroyed once the client closes or after REFUSAL_GRACE_MS, whichever is first.
 * OpenSSL refusals (version, suites, groups) never get here: OpenSSL has sent its alert already.
 */
const refuseAfterHandshake = (secure: tls.TLSSocket, error: PgwardenError, sent: () => void): void => {
  secure.on("error", () => {});
  const timer = setTimeout(() => {
    secure.destroy();
    sent();
  }, REFUSAL_GRACE_MS);
  secure.once("close", () => {
    clearTimeout(timer);
    sent();
  });
  // What the client sends meanwhile (its startup packet) is read and dropped, so no RST cuts the refusal short.
  secure.resume();
  // Node holds writes made inside the handshake callback until it returns: end once it has.
  setImmediate(() => {
    const refusal =
      error.code === "PGW_TLS_CLIENT_CERT"
        ? encodeError({ severity: "FATAL", code: error.sqlstate, message: error.message })
        : undefined;
    // `sent` once close_notify and FIN are out: the caller's own close must not overtake them.
    if (refusal === undefined) secure.end(sent);
    else secure.end(refusal, sent);
  });
};

/** The failure an OpenSSL error stands for; `error.code` is Node's name of it (ERR_SSL_…, ECONNRESET). */
const handshakeFailure = (e: Error & { code?: string }): PgwardenError =>
  e.code === "ECONNRESET" || e.code === "EPIPE"
    ? pgwardenError(
        "PGW_TLS_CLOSED",
        SqlState.connectionFailure,
        `client closed the TLS handshake: ${e.code}`,
      )
    : handshakeError(`TLS handshake failed: ${e.code ?? e.message}`);

/**
 * Turns an accepted plaintext socket into a TLS server socket on the same connection. Resolves
 * with the session or a typed failure, as PostgreSQL ends each: where OpenSSL refuses (protocol
 * version, no shared suite or group) its alert goes out and the socket is destroyed; a session
 * refused after the handshake (no ALPN on direct TLS, a client certificate that fails
 * verification) is ended with close_notify (the certificate case with a FATAL 28000 first); a
 * timeout or a client that closes destroys the socket at once. Pipelined bytes are reported
 * before anything is written, so the caller can still answer in plaintext.
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
    const finish = (outcome: TlsSession | PgwardenError, established = false) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      secure.off("error", onError);
      secure.off("close", onClose);
      if (!("_tag" in outcome)) resolve(outcome);
      else if (!established) {
        secure.destroy();
        resolve(outcome);
      } else {
        let once = false;
        refuseAfterHandshake(secure, outcome, () => {
          if (once) return;
          once = true;
          resolve(outcome);
        });
      }
    };
    const onError = (e: Error & { code?: string }) => finish(handshakeFailure(e));
    const onClose = () =>
      finish(
        pgwardenError(
          "PGW_TLS_CLOSED",
          SqlState.connectionFailure,
          "connection closed during the TLS handshake",
        ),
      );
    const timer = setTimeout(
      () => finish(pgwardenError("PGW_TLS_TIMEOUT", SqlState.connectionFailure, "TLS handshake timed out")),
      options.handshakeTimeoutMs,
    );
    secure.once("error", onError);
    secure.once("close", onClose);
    secure.once("secure", () => finish(sessionOf(secure, options), true));
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
    localCertificate: localCertificateOf(secure, options.context),
  };
};

/** DER of the certificate each context presents, parsed once per context rather than per handshake. */
const localCertificates = new WeakMap<tls.SecureContext, Buffer | undefined>();

const localCertificateOf = (secure: tls.TLSSocket, context: tls.SecureContext): Buffer | undefined => {
  if (localCertificates.has(context)) return localCertificates.get(context);
  const raw = secure.getX509Certificate()?.raw;
  localCertificates.set(context, raw);
  return raw;
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
  if (error === null || error === undefined) return undefined;
  return error.code === undefined ? error.message : `${error.message} (${error.code})`;
};

const clientCertError = (message: string): PgwardenError =>
  pgwardenError("PGW_TLS_CLIENT_CERT", SqlState.invalidAuthorization, message);
