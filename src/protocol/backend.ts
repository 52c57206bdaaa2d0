import type { PgwardenError } from "../errors.ts";
import { Backend, MAX_CANCEL_SECRET } from "./messageTypes.ts";
import { decodeWith, malformed, ownedCopy, Reader } from "./reader.ts";
import { cstringSize, Writer } from "./writer.ts";

/** Decoders and encoders for messages the server sends (and the proxy sends as a server). */

const body = (msg: Buffer): Reader => new Reader(msg, 5);

export type Authentication =
  | { readonly kind: "Ok" }
  | { readonly kind: "CleartextPassword" }
  | { readonly kind: "MD5Password"; readonly salt: Buffer }
  | { readonly kind: "SASL"; readonly mechanisms: readonly string[] }
  | { readonly kind: "SASLContinue"; readonly data: Buffer }
  | { readonly kind: "SASLFinal"; readonly data: Buffer }
  /** Kerberos, GSS, SSPI and anything newer: named so the error can say which. */
  | { readonly kind: "Unsupported"; readonly code: number };

export const AuthCode = { ok: 0, cleartext: 3, md5: 5, sasl: 10, saslContinue: 11, saslFinal: 12 } as const;

export interface BackendKeyData {
  readonly processId: number;
  readonly secret: Buffer;
}
export interface NegotiateProtocolVersion {
  /** The newest version the server speaks, as a full protocol number: 3.2 is 0x00030002. */
  readonly newestVersion: number;
  readonly unrecognized: readonly string[];
}
/** 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block. */
export type TransactionStatus = "I" | "T" | "E";

/**
 * Error and notice fields keyed by their one-letter codes: S severity, V non-localized severity,
 * C SQLSTATE, M message, D detail, H hint, P position, W where, and the rest.
 */
export type Fields = ReadonlyMap<string, string>;

export interface CopyResponse {
  readonly format: number;
  readonly columnFormats: readonly number[];
}

export const decodeAuthentication = (msg: Buffer): Authentication | PgwardenError =>
  decodeWith("Authentication", (): Authentication => {
    const r = body(msg);
    const code = r.int32("authentication code");
    switch (code) {
      case AuthCode.ok:
        r.done("AuthenticationOk");
        return { kind: "Ok" };
      case AuthCode.cleartext:
        r.done("AuthenticationCleartextPassword");
        return { kind: "CleartextPassword" };
      case AuthCode.md5: {
        const salt = r.bytes(4, "salt");
        r.done("AuthenticationMD5Password");
        return { kind: "MD5Password", salt };
      }
      case AuthCode.sasl: {
        const mechanisms: string[] = [];
        for (;;) {
          const m = r.cstring("mechanism");
          if (m === "") break;
          mechanisms.push(m);
        }
        r.done("AuthenticationSASL");
        return { kind: "SASL", mechanisms };
      }
      case AuthCode.saslContinue:
        return { kind: "SASLContinue", data: r.rest() };
      case AuthCode.saslFinal:
        return { kind: "SASLFinal", data: r.rest() };
      default:
        return { kind: "Unsupported", code };
    }
  });

export const decodeParameterStatus = (msg: Buffer): { name: string; value: string } | PgwardenError =>
  decodeWith("ParameterStatus", () => {
    const r = body(msg);
    const name = r.cstring("parameter name");
    const value = r.cstring("parameter value");
    r.done("ParameterStatus");
    return { name, value };
  });

export const decodeBackendKeyData = (msg: Buffer): BackendKeyData | PgwardenError =>
  decodeWith("BackendKeyData", () => {
    const r = body(msg);
    const processId = r.int32("process id");
    const secret = r.rest();
    if (secret.length < 4 || secret.length > MAX_CANCEL_SECRET)
      malformed(`secret key of ${secret.length} bytes`);
    // A view would keep the whole read it came from alive for the connection's life.
    return { processId, secret: ownedCopy(secret) };
  });

export const decodeNegotiateProtocolVersion = (msg: Buffer): NegotiateProtocolVersion | PgwardenError =>
  decodeWith("NegotiateProtocolVersion", () => {
    const r = body(msg);
    const newestVersion = r.int32("newest protocol version");
    const n = r.int32("option count");
    if (n < 0) malformed("negative option count");
    const unrecognized: string[] = [];
    for (let i = 0; i < n; i++) unrecognized.push(r.cstring("option name"));
    r.done("NegotiateProtocolVersion");
    return { newestVersion, unrecognized };
  });

/** ReadyForQuery's status byte, read straight from the message: the hot path calls this. */
export const readyStatusCode = (msg: Buffer): number => (msg.length === 6 ? msg[5]! : -1);

export const decodeReadyForQuery = (msg: Buffer): TransactionStatus | PgwardenError =>
  decodeWith("ReadyForQuery", () => {
    const r = body(msg);
    const s = String.fromCharCode(r.byte("transaction status"));
    r.done("ReadyForQuery");
    if (s !== "I" && s !== "T" && s !== "E") return malformed(`unknown transaction status '${s}'`);
    return s as TransactionStatus;
  });

export const decodeFields = (msg: Buffer): Fields | PgwardenError =>
  decodeWith("ErrorResponse/NoticeResponse", () => {
    const r = body(msg);
    const fields = new Map<string, string>();
    for (;;) {
      const code = r.byte("field type");
      if (code === 0) break;
      fields.set(String.fromCharCode(code), r.cstring("field value"));
    }
    r.done("ErrorResponse/NoticeResponse");
    return fields;
  });

/**
 * The SQLSTATE (field `C`) of an ErrorResponse or NoticeResponse, undefined when it has none:
 * read in place, without decoding the other fields.
 */
export const sqlstateOf = (msg: Buffer): string | undefined => {
  let pos = 5;
  while (pos < msg.length && msg[pos] !== 0) {
    const end = msg.indexOf(0, pos + 1);
    if (end < 0) return undefined;
    if (msg[pos] === 0x43) return msg.toString("latin1", pos + 1, end);
    pos = end + 1;
  }
  return undefined;
};

export const decodeCommandComplete = (msg: Buffer): string | PgwardenError =>
  decodeWith("CommandComplete", () => {
    const r = body(msg);
    const tag = r.cstring("command tag");
    r.done("CommandComplete");
    return tag;
  });

export const decodeCopyResponse = (msg: Buffer): CopyResponse | PgwardenError =>
  decodeWith("Copy response", () => {
    const r = body(msg);
    const format = r.byte("format");
    const n = r.uint16("column count");
    const columnFormats: number[] = [];
    for (let i = 0; i < n; i++) columnFormats.push(r.int16("column format"));
    r.done("Copy response");
    return { format, columnFormats };
  });

export const decodeNotification = (
  msg: Buffer,
): { processId: number; channel: string; payload: string } | PgwardenError =>
  decodeWith("NotificationResponse", () => {
    const r = body(msg);
    const processId = r.int32("process id");
    const channel = r.cstring("channel");
    const payload = r.cstring("payload");
    r.done("NotificationResponse");
    return { processId, channel, payload };
  });

/** One column of a RowDescription, fields in wire order. */
export interface FieldDescription {
  readonly name: string;
  /** OID of the table the column comes from, 0 when it is not a table column. */
  readonly tableOid: number;
  /** Attribute number of the column in that table, 0 when none. */
  readonly columnAttr: number;
  readonly typeOid: number;
  /** pg_type.typlen: -1 for variable length. */
  readonly typeSize: number;
  readonly typeModifier: number;
  /** 0 text, 1 binary. */
  readonly format: number;
}

/** A DataRow value: the column's bytes, or null for SQL NULL. */
export type DataValue = string | Uint8Array | null;

export const decodeRowDescription = (msg: Buffer): FieldDescription[] | PgwardenError =>
  decodeWith("RowDescription", () => {
    const r = body(msg);
    const n = r.uint16("field count");
    const fields: FieldDescription[] = [];
    for (let i = 0; i < n; i++) {
      fields.push({
        name: r.cstring("field name"),
        tableOid: r.uint32("table oid"),
        columnAttr: r.int16("column number"),
        typeOid: r.uint32("type oid"),
        typeSize: r.int16("type size"),
        typeModifier: r.int32("type modifier"),
        format: r.int16("format code"),
      });
    }
    r.done("RowDescription");
    return fields;
  });

/** Column values as views into the message; null is SQL NULL. */
export const decodeDataRow = (msg: Buffer): (Buffer | null)[] | PgwardenError =>
  decodeWith("DataRow", () => {
    const r = body(msg);
    const n = r.uint16("column count");
    const values: (Buffer | null)[] = [];
    for (let i = 0; i < n; i++) {
      const len = r.int32("value length");
      if (len < -1) malformed(`invalid value length ${len}`);
      values.push(len === -1 ? null : r.bytes(len, "value"));
    }
    r.done("DataRow");
    return values;
  });

// Encoders ------------------------------------------------------------------------------------

const authHeader = (extra: number, code: number): Writer =>
  Writer.message(Backend.Authentication, 4 + extra).int32(code);

export const encodeAuthentication = (a: Authentication): Buffer => {
  switch (a.kind) {
    case "Ok":
      return authHeader(0, AuthCode.ok).end();
    case "CleartextPassword":
      return authHeader(0, AuthCode.cleartext).end();
    case "MD5Password":
      return authHeader(4, AuthCode.md5).bytes(a.salt).end();
    case "SASL": {
      let size = 1;
      for (const m of a.mechanisms) size += cstringSize(m);
      const w = authHeader(size, AuthCode.sasl);
      for (const m of a.mechanisms) w.cstring(m);
      return w.byte(0).end();
    }
    case "SASLContinue":
      return authHeader(a.data.length, AuthCode.saslContinue).bytes(a.data).end();
    case "SASLFinal":
      return authHeader(a.data.length, AuthCode.saslFinal).bytes(a.data).end();
    case "Unsupported":
      return authHeader(0, a.code).end();
  }
};

export const encodeParameterStatus = (name: string, value: string): Buffer =>
  Writer.message(Backend.ParameterStatus, cstringSize(name) + cstringSize(value))
    .cstring(name)
    .cstring(value)
    .end();

export const encodeBackendKeyData = (k: BackendKeyData): Buffer =>
  Writer.message(Backend.BackendKeyData, 4 + k.secret.length)
    .int32(k.processId)
    .bytes(k.secret)
    .end();

export const encodeNegotiateProtocolVersion = (n: NegotiateProtocolVersion): Buffer => {
  let size = 8;
  for (const o of n.unrecognized) size += cstringSize(o);
  const w = Writer.message(Backend.NegotiateProtocolVersion, size)
    .int32(n.newestVersion)
    .int32(n.unrecognized.length);
  for (const o of n.unrecognized) w.cstring(o);
  return w.end();
};

export const encodeReadyForQuery = (status: TransactionStatus): Buffer =>
  Writer.message(Backend.ReadyForQuery, 1).byte(status.charCodeAt(0)).end();

const encodeFieldsAs = (type: number, fields: Fields): Buffer => {
  let size = 1;
  for (const [k, v] of fields) {
    if (k.length !== 1) throw new Error(`field code must be one character, got "${k}"`);
    size += 1 + cstringSize(v);
  }
  const w = Writer.message(type, size);
  for (const [k, v] of fields) w.byte(k.charCodeAt(0)).cstring(v);
  return w.byte(0).end();
};
export const encodeErrorFields = (fields: Fields): Buffer => encodeFieldsAs(Backend.ErrorResponse, fields);
export const encodeNoticeFields = (fields: Fields): Buffer => encodeFieldsAs(Backend.NoticeResponse, fields);

export type Severity = "ERROR" | "FATAL" | "PANIC" | "WARNING" | "NOTICE" | "DEBUG" | "INFO" | "LOG";

/** An ErrorResponse the way PostgreSQL writes one: severity twice, code, message, then extras. */
export const encodeError = (e: {
  severity: Severity;
  code: string;
  message: string;
  detail?: string | undefined;
  hint?: string | undefined;
}): Buffer => {
  const fields = new Map<string, string>([
    ["S", e.severity],
    ["V", e.severity],
    ["C", e.code],
    ["M", e.message],
  ]);
  if (e.detail !== undefined) fields.set("D", e.detail);
  if (e.hint !== undefined) fields.set("H", e.hint);
  return encodeErrorFields(fields);
};

export const encodeNotice = (e: { severity: Severity; code: string; message: string }): Buffer =>
  encodeNoticeFields(
    new Map([
      ["S", e.severity],
      ["V", e.severity],
      ["C", e.code],
      ["M", e.message],
    ]),
  );

export const encodeCommandComplete = (tag: string): Buffer =>
  Writer.message(Backend.CommandComplete, cstringSize(tag)).cstring(tag).end();

const encodeCopyResponseAs =
  (type: number) =>
  (c: CopyResponse): Buffer => {
    const w = Writer.message(type, 3 + 2 * c.columnFormats.length)
      .byte(c.format)
      .uint16(c.columnFormats.length);
    for (const f of c.columnFormats) w.int16(f);
    return w.end();
  };
export const encodeCopyInResponse: (c: CopyResponse) => Buffer = encodeCopyResponseAs(Backend.CopyInResponse);
export const encodeCopyOutResponse: (c: CopyResponse) => Buffer = encodeCopyResponseAs(
  Backend.CopyOutResponse,
);
export const encodeCopyBothResponse: (c: CopyResponse) => Buffer = encodeCopyResponseAs(
  Backend.CopyBothResponse,
);

export const encodeNotification = (n: { processId: number; channel: string; payload: string }): Buffer =>
  Writer.message(Backend.NotificationResponse, 4 + cstringSize(n.channel) + cstringSize(n.payload))
    .int32(n.processId)
    .cstring(n.channel)
    .cstring(n.payload)
    .end();

export const encodeRowDescription = (fields: readonly FieldDescription[]): Buffer => {
  let size = 2;
  for (const f of fields) size += cstringSize(f.name) + 18;
  const w = Writer.message(Backend.RowDescription, size).uint16(fields.length);
  for (const f of fields) {
    w.cstring(f.name);
    // OIDs are unsigned on the wire; writing them as int32 keeps the bytes.
    w.int32(f.tableOid | 0)
      .int16(f.columnAttr)
      .int32(f.typeOid | 0)
      .int16(f.typeSize)
      .int32(f.typeModifier)
      .int16(f.format);
  }
  return w.end();
};

export const encodeDataRow = (values: readonly DataValue[]): Buffer => {
  // Strings are measured, then written in place: no intermediate Buffer per value.
  let size = 7;
  for (const v of values)
    size += 4 + (v === null ? 0 : typeof v === "string" ? Buffer.byteLength(v, "utf8") : v.length);
  const buf = Buffer.allocUnsafe(size);
  buf[0] = Backend.DataRow;
  buf.writeInt32BE(size - 1, 1);
  buf.writeUInt16BE(values.length, 5);
  let pos = 7;
  for (const v of values) {
    if (v === null) {
      buf.writeInt32BE(-1, pos);
      pos += 4;
    } else if (typeof v === "string") {
      const n = buf.write(v, pos + 4, "utf8");
      buf.writeInt32BE(n, pos);
      pos += 4 + n;
    } else {
      buf.writeInt32BE(v.length, pos);
      buf.set(v, pos + 4);
      pos += 4 + v.length;
    }
  }
  if (pos !== size) throw new Error(`DataRow size mismatch: wrote ${pos} of ${size}`);
  return buf;
};

export const encodeEmptyQueryResponse = (): Buffer => Writer.message(Backend.EmptyQueryResponse, 0).end();
