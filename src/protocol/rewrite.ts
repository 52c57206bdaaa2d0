import { isPgwardenError, type PgwardenError, protocolError } from "../errors.ts";
import { Backend, Frontend } from "./messageTypes.ts";
import { Writer } from "./writer.ts";

/**
 * Renames the prepared statement a client message refers to, leaving every other byte as the
 * client sent it: Parse (statement name), Bind (statement name; the portal stays), Describe and
 * Close of target 'S'. A Describe/Close of a portal is returned unchanged.
 */

/** PostgreSQL truncates identifiers at NAMEDATALEN-1 bytes; a longer name would silently alias. */
export const MAX_STATEMENT_NAME_BYTES = 63;

interface Span {
  readonly start: number;
  /** Index of the terminating NUL. */
  readonly end: number;
}

const cstringAt = (msg: Buffer, start: number): Span | undefined => {
  const end = msg.indexOf(0, start);
  return end < 0 ? undefined : { start, end };
};

/** Where the statement name sits in the message, null when the message names a portal instead. */
const statementNameSpan = (msg: Buffer): Span | null | PgwardenError => {
  switch (msg[0]) {
    case Frontend.Parse:
      return cstringAt(msg, 5) ?? protocolError("Parse: statement name is not terminated");
    case Frontend.Bind: {
      const portal = cstringAt(msg, 5);
      if (portal === undefined) return protocolError("Bind: portal name is not terminated");
      return cstringAt(msg, portal.end + 1) ?? protocolError("Bind: statement name is not terminated");
    }
    case Frontend.Describe:
    case Frontend.Close:
      if (msg.length < 7) return protocolError("Describe/Close: message too short");
      if (msg[5] === 0x50) return null;
      if (msg[5] !== 0x53) return protocolError("Describe/Close: target must be 'S' or 'P'");
      return cstringAt(msg, 6) ?? protocolError("Describe/Close: name is not terminated");
    default:
      return protocolError(`cannot rename the statement of message type 0x${(msg[0] ?? 0).toString(16)}`);
  }
};

/** The prepared statement a Parse, Bind, or Describe/Close of 'S' names; undefined for a portal or a malformed message. */
export const statementNameOf = (msg: Buffer): string | undefined => {
  const span = statementNameSpan(msg);
  return span === null || isPgwardenError(span) ? undefined : msg.toString("utf8", span.start, span.end);
};

const checkName = (name: string): Buffer | PgwardenError => {
  const bytes = Buffer.from(name, "utf8");
  if (bytes.includes(0)) return protocolError("statement name contains a NUL byte");
  if (bytes.length > MAX_STATEMENT_NAME_BYTES) return protocolError("statement name is longer than 63 bytes");
  return bytes;
};

/** The message with its statement name replaced; a new Buffer, the input is not modified. */
export const rewriteStatementName = (msg: Buffer, name: string): Buffer | PgwardenError => {
  if (msg.length < 5 || msg.readInt32BE(1) !== msg.length - 1)
    return protocolError("message length mismatch");
  const span = statementNameSpan(msg);
  if (span === null) return msg;
  if (isPgwardenError(span)) return span;
  const bytes = checkName(name);
  if (isPgwardenError(bytes)) return bytes;
  const out = Buffer.allocUnsafe(msg.length - (span.end - span.start) + bytes.length);
  msg.copy(out, 0, 0, span.start);
  bytes.copy(out, span.start);
  msg.copy(out, span.start + bytes.length, span.end);
  out.writeInt32BE(out.length - 1, 1);
  return out;
};

// Local answers pgwarden gives in the server's place.
export const encodeParseComplete = (): Buffer => Writer.message(Backend.ParseComplete, 0).end();
export const encodeCloseComplete = (): Buffer => Writer.message(Backend.CloseComplete, 0).end();
