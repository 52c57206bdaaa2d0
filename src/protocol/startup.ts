import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import { MAX_CANCEL_SECRET, MAX_STARTUP_PACKET, RequestCode, TLS_HANDSHAKE_BYTE } from "./messageTypes.ts";
import { decodeWith, malformed, Reader } from "./reader.ts";
import { cstringSize, Writer } from "./writer.ts";

/** What the untagged first packet of a connection asks for. */
export type FirstPacket =
  | {
      readonly kind: "Startup";
      readonly major: number;
      readonly minor: number;
      /** user, database, options, application_name, `_pq_.*` protocol options, GUCs… in arrival order. */
      readonly parameters: ReadonlyMap<string, string>;
    }
  | { readonly kind: "SSLRequest" }
  | { readonly kind: "GSSENCRequest" }
  | { readonly kind: "CancelRequest"; readonly processId: number; readonly secret: Buffer }
  /** PostgreSQL 17 direct TLS: a TLS ClientHello where a length was expected. */
  | { readonly kind: "DirectTLS" };

/**
 * How many bytes the first packet takes, once enough has arrived to tell:
 * a number (the whole packet's length), "need-more", "direct-tls", or an error.
 */
export const firstPacketLength = (
  buf: Buffer,
  directTlsAllowed = true,
): number | "need-more" | "direct-tls" | PgwardenError => {
  // Only the very first packet may be a TLS ClientHello; after a refused request 0x16 is a length.
  if (directTlsAllowed && buf.length >= 1 && buf[0] === TLS_HANDSHAKE_BYTE) return "direct-tls";
  if (buf.length < 4) return "need-more";
  const len = buf.readInt32BE(0);
  // PostgreSQL only logs these and closes: the client gets no ErrorResponse (see isSilent).
  if (len < 8) return silentStartupError(`invalid length of startup packet: ${len}`);
  // PostgreSQL's limit counts the packet without its length word.
  if (len - 4 > MAX_STARTUP_PACKET) {
    return pgwardenError(
      "PGW_STARTUP_TOO_LARGE",
      SqlState.protocolViolation,
      `invalid length of startup packet: ${len}`,
    );
  }
  return len;
};

const silentStartupError = (message: string): PgwardenError =>
  pgwardenError("PGW_STARTUP_INVALID", SqlState.protocolViolation, message);

/**
 * First-packet errors PostgreSQL answers with silence: it logs them and closes the socket
 * (a client that sent garbage is not owed a reply, and libpq's Terminate-before-startup race
 * must not turn into a failed connect). Every other first-packet error gets a FATAL.
 */
export const isSilent = (e: PgwardenError): boolean =>
  e.code === "PGW_STARTUP_INVALID" || e.code === "PGW_STARTUP_TOO_LARGE";

/** What PostgreSQL says to a second SSLRequest or GSSENCRequest: their codes read as a version. */
export const repeatedNegotiation = (code: number): PgwardenError =>
  pgwardenError(
    "PGW_UNSUPPORTED_PROTOCOL",
    SqlState.featureNotSupported,
    `unsupported frontend protocol ${code >>> 16}.${code & 0xffff}: server supports 3.0 to 3.2`,
  );

/** Protocol 2's ErrorResponse: `E`, the text, NUL. */
export const encodeV2Error = (message: string): Buffer => Buffer.from(`EFATAL:  ${message}\n\0`, "utf8");

/** Bytes that arrived after an encryption request and before its answer could be acted on. */
export const dataAfterNegotiation = (kind: "SSLRequest" | "GSSENCRequest"): PgwardenError =>
  protocolError(
    kind === "SSLRequest"
      ? "received unencrypted data after SSL request"
      : "received unencrypted data after GSSAPI encryption request",
    "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
  );

/** Decodes a complete first packet (length prefix included). */
export const decodeFirstPacket = (packet: Buffer): FirstPacket | PgwardenError => {
  if (packet.length >= 1 && packet[0] === TLS_HANDSHAKE_BYTE) return { kind: "DirectTLS" };
  return decodeWith("startup packet", (): FirstPacket | PgwardenError => {
    const r = new Reader(packet);
    r.int32("length");
    const code = r.int32("protocol version");
    switch (code) {
      case RequestCode.ssl:
        r.done("SSLRequest");
        return { kind: "SSLRequest" };
      case RequestCode.gssenc:
        r.done("GSSENCRequest");
        return { kind: "GSSENCRequest" };
      case RequestCode.cancel: {
        // PostgreSQL drops a cancel packet of the wrong size without a word.
        if (packet.length < 16 || packet.length > 12 + MAX_CANCEL_SECRET) {
          return silentStartupError(`invalid length of query cancel packet: ${packet.length}`);
        }
        const processId = r.int32("process id");
        const secret = r.rest();
        if (secret.length < 4 || secret.length > MAX_CANCEL_SECRET) {
          return silentStartupError(
            `invalid length of query cancel packet: cancel key of ${secret.length} bytes`,
          );
        }
        return { kind: "CancelRequest", processId, secret };
      }
    }
    const major = code >>> 16;
    const minor = code & 0xffff;
    if (major !== 3) {
      return pgwardenError(
        // A protocol 2 client reads only the old error format: the code tells the caller to use it.
        major < 3 ? "PGW_UNSUPPORTED_PROTOCOL_V2" : "PGW_UNSUPPORTED_PROTOCOL",
        SqlState.featureNotSupported,
        `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.2`,
      );
    }
    const parameters = new Map<string, string>();
    for (;;) {
      // Strict: a lossy decode would let two different byte strings pass as one name or value.
      const name = r.strictCstring("parameter name");
      if (name === "") break;
      if (parameters.has(name)) return malformed(`duplicate parameter "${name}"`);
      parameters.set(name, r.strictCstring(`value of parameter "${name}"`));
    }
    r.done("StartupMessage");
    return { kind: "Startup", major, minor, parameters };
  });
};

export const encodeStartup = (parameters: ReadonlyMap<string, string>, minor = 0): Buffer => {
  let size = 4 + 1;
  for (const [k, v] of parameters) size += cstringSize(k) + cstringSize(v);
  const w = Writer.untagged(size).int32((3 << 16) | minor);
  for (const [k, v] of parameters) w.cstring(k).cstring(v);
  return w.byte(0).end();
};

export const encodeCancelRequest = (processId: number, secret: Uint8Array): Buffer =>
  Writer.untagged(8 + secret.length)
    .int32(RequestCode.cancel)
    .int32(processId)
    .bytes(secret)
    .end();

export const encodeSSLRequest = (): Buffer => Writer.untagged(4).int32(RequestCode.ssl).end();
export const encodeGSSENCRequest = (): Buffer => Writer.untagged(4).int32(RequestCode.gssenc).end();

/** The single-byte answers to SSLRequest and GSSENCRequest. */
export const SSL_ACCEPT = Buffer.from("S");
export const SSL_REFUSE = Buffer.from("N");
