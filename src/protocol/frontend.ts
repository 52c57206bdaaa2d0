import type { PgwardenError } from "../errors.ts";
import { Frontend } from "./messageTypes.ts";
import { decodeWith, malformed, Reader } from "./reader.ts";
import { cstringSize, Writer } from "./writer.ts";

/**
 * Decoders and encoders for messages the client sends. Decoders take the whole message
 * (type byte and length included) as handed out by the MessageScanner.
 */

const body = (msg: Buffer): Reader => new Reader(msg, 5);

export interface Parse {
  readonly name: string;
  readonly query: string;
  readonly paramTypes: readonly number[];
}
export interface Bind {
  readonly portal: string;
  readonly statement: string;
  readonly paramFormats: readonly number[];
  /** Views into the message; null is SQL NULL. */
  readonly params: readonly (Buffer | null)[];
  readonly resultFormats: readonly number[];
}
export interface DescribeOrClose {
  readonly target: "S" | "P";
  readonly name: string;
}
export interface Execute {
  readonly portal: string;
  readonly maxRows: number;
}
export interface FunctionCall {
  readonly functionOid: number;
  readonly argFormats: readonly number[];
  readonly args: readonly (Buffer | null)[];
  readonly resultFormat: number;
}
export interface SASLInitialResponse {
  readonly mechanism: string;
  readonly data: Buffer | null;
}

const int16s = (r: Reader, what: string): number[] => {
  const n = r.uint16(`${what} count`);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = r.int16(what);
  return out;
};

const values = (r: Reader, what: string): (Buffer | null)[] => {
  const n = r.uint16(`${what} count`);
  const out = new Array<Buffer | null>(n);
  for (let i = 0; i < n; i++) {
    const len = r.int32(`${what} length`);
    if (len < -1) malformed(`invalid ${what} length ${len}`);
    out[i] = len === -1 ? null : r.bytes(len, what);
  }
  return out;
};

const target = (r: Reader): "S" | "P" => {
  const t = r.byte("target");
  if (t === 0x53) return "S";
  if (t === 0x50) return "P";
  return malformed(`target must be 'S' or 'P', got 0x${t.toString(16)}`);
};

export const decodeQuery = (msg: Buffer): string | PgwardenError =>
  decodeWith("Query", () => {
    const r = body(msg);
    const sql = r.cstring("query string");
    r.done("Query");
    return sql;
  });

export const decodeParse = (msg: Buffer): Parse | PgwardenError =>
  decodeWith("Parse", () => {
    const r = body(msg);
    const name = r.cstring("statement name");
    const query = r.cstring("query string");
    const paramTypes = new Array<number>(0);
    const n = r.uint16("parameter type count");
    for (let i = 0; i < n; i++) paramTypes.push(r.uint32("parameter type"));
    r.done("Parse");
    return { name, query, paramTypes };
  });

export const decodeBind = (msg: Buffer): Bind | PgwardenError =>
  decodeWith("Bind", () => {
    const r = body(msg);
    const portal = r.cstring("portal name");
    const statement = r.cstring("statement name");
    const paramFormats = int16s(r, "parameter format");
    const params = values(r, "parameter");
    const resultFormats = int16s(r, "result format");
    r.done("Bind");
    if (paramFormats.length > 1 && paramFormats.length !== params.length) {
      malformed(`${paramFormats.length} parameter formats for ${params.length} parameters`);
    }
    return { portal, statement, paramFormats, params, resultFormats };
  });

const decodeDescribeOrClose = (what: string) => (msg: Buffer) =>
  decodeWith(what, (): DescribeOrClose => {
    const r = body(msg);
    const t = target(r);
    const name = r.cstring("name");
    r.done(what);
    return { target: t, name };
  });
export const decodeDescribe: (msg: Buffer) => DescribeOrClose | PgwardenError =
  decodeDescribeOrClose("Describe");
export const decodeClose: (msg: Buffer) => DescribeOrClose | PgwardenError = decodeDescribeOrClose("Close");

export const decodeExecute = (msg: Buffer): Execute | PgwardenError =>
  decodeWith("Execute", () => {
    const r = body(msg);
    const portal = r.cstring("portal name");
    const maxRows = r.int32("row limit");
    r.done("Execute");
    return { portal, maxRows };
  });

export const decodeCopyFail = (msg: Buffer): string | PgwardenError =>
  decodeWith("CopyFail", () => {
    const r = body(msg);
    const reason = r.cstring("error message");
    r.done("CopyFail");
    return reason;
  });

export const decodeFunctionCall = (msg: Buffer): FunctionCall | PgwardenError =>
  decodeWith("FunctionCall", () => {
    const r = body(msg);
    const functionOid = r.uint32("function oid");
    const argFormats = int16s(r, "argument format");
    const args = values(r, "argument");
    const resultFormat = r.int16("result format");
    r.done("FunctionCall");
    return { functionOid, argFormats, args, resultFormat };
  });

/** A message with no body (Sync, Flush, CopyDone, Terminate): only the length can be wrong. */
export const checkEmpty = (msg: Buffer, what: string): true | PgwardenError =>
  decodeWith(what, () => {
    body(msg).done(what);
    return true as const;
  });

export const decodePasswordMessage = (msg: Buffer): string | PgwardenError =>
  decodeWith("PasswordMessage", () => {
    const r = body(msg);
    const password = r.cstring("password");
    r.done("PasswordMessage");
    return password;
  });

export const decodeSASLInitialResponse = (msg: Buffer): SASLInitialResponse | PgwardenError =>
  decodeWith("SASLInitialResponse", () => {
    const r = body(msg);
    const mechanism = r.cstring("mechanism");
    const len = r.int32("data length");
    if (len < -1) malformed(`invalid data length ${len}`);
    const data = len === -1 ? null : r.bytes(len, "data");
    r.done("SASLInitialResponse");
    return { mechanism, data };
  });

export const decodeSASLResponse = (msg: Buffer): Buffer => msg.subarray(5);

// Encoders ------------------------------------------------------------------------------------

const empty = (type: number) => (): Buffer => Writer.message(type, 0).end();

export const encodeQuery = (sql: string): Buffer =>
  Writer.message(Frontend.Query, cstringSize(sql)).cstring(sql).end();

export const encodeParse = (p: Parse): Buffer =>
  Writer.message(Frontend.Parse, cstringSize(p.name) + cstringSize(p.query) + 2 + 4 * p.paramTypes.length)
    .cstring(p.name)
    .cstring(p.query)
    .uint16(p.paramTypes.length)
    .apply((w) => {
      for (const t of p.paramTypes) w.int32(t | 0);
    })
    .end();

const valuesSize = (vs: readonly (Buffer | null)[]): number => {
  let n = 2;
  for (const v of vs) n += 4 + (v === null ? 0 : v.length);
  return n;
};
const writeValues = (w: Writer, vs: readonly (Buffer | null)[]): void => {
  w.uint16(vs.length);
  for (const v of vs) {
    if (v === null) w.int32(-1);
    else w.int32(v.length).bytes(v);
  }
};
const writeInt16s = (w: Writer, xs: readonly number[]): void => {
  w.uint16(xs.length);
  for (const x of xs) w.int16(x);
};

export const encodeBind = (b: Bind): Buffer =>
  Writer.message(
    Frontend.Bind,
    cstringSize(b.portal) +
      cstringSize(b.statement) +
      2 +
      2 * b.paramFormats.length +
      valuesSize(b.params) +
      2 +
      2 * b.resultFormats.length,
  )
    .cstring(b.portal)
    .cstring(b.statement)
    .apply((w) => {
      writeInt16s(w, b.paramFormats);
      writeValues(w, b.params);
      writeInt16s(w, b.resultFormats);
    })
    .end();

const encodeDescribeOrClose =
  (type: number) =>
  (d: DescribeOrClose): Buffer =>
    Writer.message(type, 1 + cstringSize(d.name))
      .byte(d.target.charCodeAt(0))
      .cstring(d.name)
      .end();
export const encodeDescribe: (d: DescribeOrClose) => Buffer = encodeDescribeOrClose(Frontend.Describe);
export const encodeClose: (d: DescribeOrClose) => Buffer = encodeDescribeOrClose(Frontend.Close);

export const encodeExecute = (e: Execute): Buffer =>
  Writer.message(Frontend.Execute, cstringSize(e.portal) + 4)
    .cstring(e.portal)
    .int32(e.maxRows)
    .end();

export const encodeSync: () => Buffer = empty(Frontend.Sync);
export const encodeFlush: () => Buffer = empty(Frontend.Flush);
export const encodeCopyDone: () => Buffer = empty(Frontend.CopyDone);
export const encodeTerminate: () => Buffer = empty(Frontend.Terminate);

export const encodeCopyData = (data: Uint8Array): Buffer =>
  Writer.message(Frontend.CopyData, data.length).bytes(data).end();

export const encodeCopyFail = (reason: string): Buffer =>
  Writer.message(Frontend.CopyFail, cstringSize(reason)).cstring(reason).end();

export const encodeFunctionCall = (f: FunctionCall): Buffer =>
  Writer.message(Frontend.FunctionCall, 4 + 2 + 2 * f.argFormats.length + valuesSize(f.args) + 2)
    .int32(f.functionOid | 0)
    .apply((w) => {
      writeInt16s(w, f.argFormats);
      writeValues(w, f.args);
    })
    .int16(f.resultFormat)
    .end();

export const encodePasswordMessage = (password: string): Buffer =>
  Writer.message(Frontend.Password, cstringSize(password)).cstring(password).end();

export const encodeSASLInitialResponse = (mechanism: string, data: Uint8Array | null): Buffer =>
  Writer.message(Frontend.Password, cstringSize(mechanism) + 4 + (data?.length ?? 0))
    .cstring(mechanism)
    .apply((w) => {
      if (data === null) w.int32(-1);
      else w.int32(data.length).bytes(data);
    })
    .end();

export const encodeSASLResponse = (data: Uint8Array): Buffer =>
  Writer.message(Frontend.Password, data.length).bytes(data).end();
