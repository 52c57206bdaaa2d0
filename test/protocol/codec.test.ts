import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { isPgwardenError, type PgwardenError } from "../../src/errors.ts";
import {
  type Authentication,
  Backend,
  type Bind,
  checkEmpty,
  decodeAuthentication,
  decodeBackendKeyData,
  decodeBind,
  decodeClose,
  decodeCommandComplete,
  decodeCopyFail,
  decodeCopyResponse,
  decodeDescribe,
  decodeExecute,
  decodeFields,
  decodeFirstPacket,
  decodeFunctionCall,
  decodeNegotiateProtocolVersion,
  decodeNotification,
  decodeParameterStatus,
  decodeParse,
  decodePasswordMessage,
  decodeQuery,
  decodeReadyForQuery,
  decodeSASLInitialResponse,
  decodeSASLResponse,
  encodeAuthentication,
  encodeBackendKeyData,
  encodeBind,
  encodeCancelRequest,
  encodeClose,
  encodeCommandComplete,
  encodeCopyBothResponse,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeCopyInResponse,
  encodeCopyOutResponse,
  encodeDescribe,
  encodeError,
  encodeErrorFields,
  encodeExecute,
  encodeFlush,
  encodeFunctionCall,
  encodeGSSENCRequest,
  encodeNegotiateProtocolVersion,
  encodeNotice,
  encodeNoticeFields,
  encodeNotification,
  encodeParameterStatus,
  encodeParse,
  encodePasswordMessage,
  encodeQuery,
  encodeReadyForQuery,
  encodeSASLInitialResponse,
  encodeSASLResponse,
  encodeSSLRequest,
  encodeStartup,
  encodeSync,
  encodeTerminate,
  Frontend,
  firstPacketLength,
  isSilent,
  readyStatusCode,
} from "../../src/protocol/index.ts";

// Helpers ---------------------------------------------------------------------------------------

const RUNS = { numRuns: 200 };

/** A decoded value, or the test fails naming the error. */
const ok = <A>(v: A | PgwardenError): A => {
  if (isPgwardenError(v)) throw new Error(`unexpected ${v.code}: ${v.message}`);
  return v;
};

const expectProtocolError = (v: unknown, message?: string): void => {
  expect(isPgwardenError(v)).toBe(true);
  const e = v as PgwardenError;
  expect(e.code).toBe("PGW_PROTOCOL");
  expect(e.sqlstate).toBe("08P01");
  if (message !== undefined) expect(e.message).toBe(message);
};

/** Type byte and length field of a tagged message agree with the buffer. */
const expectFramed = (msg: Buffer, type: number): void => {
  expect(msg[0]).toBe(type);
  expect(msg.readInt32BE(1)).toBe(msg.length - 1);
};

/** A tagged message with an arbitrary body (length field set to match). */
const raw = (type: number, body: Uint8Array | readonly number[]): Buffer => {
  const b = Buffer.from(body as Uint8Array);
  const out = Buffer.alloc(5 + b.length);
  out[0] = type;
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
};

const be16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
};
const be32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
};
const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, "utf8");

// Arbitraries -----------------------------------------------------------------------------------

/** Any well-formed Unicode string without NUL: what PostgreSQL strings can hold. */
const text = (maxLength = 24) => fc.string({ unit: "binary", maxLength }).map((s) => s.replaceAll("\0", ""));
const nonEmptyText = text().filter((s) => s.length > 0);
const bytes = (maxLength = 48, minLength = 0) =>
  fc.uint8Array({ minLength, maxLength }).map((u) => Buffer.from(u));
const int16 = fc.integer({ min: -32768, max: 32767 });
const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });
const value = fc.option(bytes(), { nil: null });

const parseArb = fc.record({ name: text(), query: text(64), paramTypes: fc.array(uint32, { maxLength: 8 }) });

const bindArb: fc.Arbitrary<Bind> = fc
  .record({
    portal: text(),
    statement: text(),
    params: fc.array(value, { maxLength: 8 }),
    resultFormats: fc.array(int16, { maxLength: 6 }),
    formatMode: fc.constantFrom("none", "one", "each"),
    formats: fc.array(fc.constantFrom(0, 1), { minLength: 8, maxLength: 8 }),
  })
  .map(({ portal, statement, params, resultFormats, formatMode, formats }) => ({
    portal,
    statement,
    params,
    resultFormats,
    paramFormats:
      formatMode === "none"
        ? []
        : formatMode === "one"
          ? formats.slice(0, 1)
          : formats.slice(0, params.length),
  }));

const targetArb = fc.record({ target: fc.constantFrom("S" as const, "P" as const), name: text() });
const executeArb = fc.record({ portal: text(), maxRows: int32 });
const functionCallArb = fc.record({
  functionOid: uint32,
  argFormats: fc.array(fc.constantFrom(0, 1), { maxLength: 4 }),
  args: fc.array(value, { maxLength: 6 }),
  resultFormat: fc.constantFrom(0, 1),
});

const unsupportedAuthCode = int32.filter((c) => ![0, 3, 5, 10, 11, 12].includes(c));
const authArb: fc.Arbitrary<Authentication> = fc.oneof(
  fc.constant({ kind: "Ok" as const }),
  fc.constant({ kind: "CleartextPassword" as const }),
  bytes(4, 4).map((salt) => ({ kind: "MD5Password" as const, salt })),
  fc.array(nonEmptyText, { maxLength: 4 }).map((mechanisms) => ({ kind: "SASL" as const, mechanisms })),
  bytes(96).map((data) => ({ kind: "SASLContinue" as const, data })),
  bytes(96).map((data) => ({ kind: "SASLFinal" as const, data })),
  unsupportedAuthCode.map((code) => ({ kind: "Unsupported" as const, code })),
);

const fieldCodes = [..."SVCMDHPpqWstcdnFLR"];
const fieldsArb = fc
  .uniqueArray(fc.tuple(fc.constantFrom(...fieldCodes), text(40)), { selector: (t) => t[0], maxLength: 10 })
  .map((entries) => new Map(entries));
const copyResponseArb = fc.record({
  format: fc.integer({ min: 0, max: 255 }),
  columnFormats: fc.array(int16, { maxLength: 10 }),
});
const notificationArb = fc.record({ processId: int32, channel: text(), payload: text(64) });
const negotiateArb = fc.record({
  newestVersion: int32,
  unrecognized: fc.array(
    text().map((s) => `_pq_.${s}`),
    { maxLength: 5 },
  ),
});
const startupParamsArb = fc
  .uniqueArray(fc.tuple(nonEmptyText, text(40)), { selector: (t) => t[0], maxLength: 8 })
  .map((entries) => new Map(entries));

// Round trips: frontend -------------------------------------------------------------------------

describe("frontend messages round-trip", () => {
  test.prop([text(200)], RUNS)("Query", (sql) => {
    const msg = encodeQuery(sql);
    expectFramed(msg, Frontend.Query);
    expect(ok(decodeQuery(msg))).toBe(sql);
  });

  test.prop([parseArb], RUNS)("Parse, with parameter type OIDs over 2^31", (p) => {
    const msg = encodeParse(p);
    expectFramed(msg, Frontend.Parse);
    expect(ok(decodeParse(msg))).toEqual(p);
  });

  test.prop([bindArb], RUNS)("Bind, with NULL and binary parameters", (b) => {
    const msg = encodeBind(b);
    expectFramed(msg, Frontend.Bind);
    const d = ok(decodeBind(msg));
    expect(d).toEqual(b);
    // NULL stays NULL and an empty value stays an empty value.
    expect(d.params.map((p) => (p === null ? null : p.length))).toEqual(
      b.params.map((p) => (p === null ? null : p.length)),
    );
  });

  test.prop([targetArb], RUNS)("Describe and Close", (d) => {
    const describe = encodeDescribe(d);
    const close = encodeClose(d);
    expectFramed(describe, Frontend.Describe);
    expectFramed(close, Frontend.Close);
    expect(ok(decodeDescribe(describe))).toEqual(d);
    expect(ok(decodeClose(close))).toEqual(d);
  });

  test.prop([executeArb], RUNS)("Execute", (e) => {
    const msg = encodeExecute(e);
    expectFramed(msg, Frontend.Execute);
    expect(ok(decodeExecute(msg))).toEqual(e);
  });

  test.prop([bytes(300)], RUNS)("CopyData carries its bytes verbatim", (data) => {
    const msg = encodeCopyData(data);
    expectFramed(msg, Frontend.CopyData);
    expect(msg.subarray(5)).toEqual(data);
  });

  test.prop([text(80)], RUNS)("CopyFail", (reason) => {
    const msg = encodeCopyFail(reason);
    expectFramed(msg, Frontend.CopyFail);
    expect(ok(decodeCopyFail(msg))).toBe(reason);
  });

  test.prop([functionCallArb], RUNS)("FunctionCall", (f) => {
    const msg = encodeFunctionCall(f);
    expectFramed(msg, Frontend.FunctionCall);
    expect(ok(decodeFunctionCall(msg))).toEqual(f);
  });

  test.prop([text(80)], RUNS)("PasswordMessage", (password) => {
    const msg = encodePasswordMessage(password);
    expectFramed(msg, Frontend.Password);
    expect(ok(decodePasswordMessage(msg))).toBe(password);
  });

  test.prop([text(), fc.option(bytes(120), { nil: null })], RUNS)(
    "SASLInitialResponse, including absent (-1) data",
    (mechanism, data) => {
      const msg = encodeSASLInitialResponse(mechanism, data);
      expectFramed(msg, Frontend.Password);
      expect(ok(decodeSASLInitialResponse(msg))).toEqual({ mechanism, data });
      if (data === null) expect(msg.readInt32BE(msg.length - 4)).toBe(-1);
    },
  );

  test.prop([bytes(120)], RUNS)("SASLResponse", (data) => {
    const msg = encodeSASLResponse(data);
    expectFramed(msg, Frontend.Password);
    expect(decodeSASLResponse(msg)).toEqual(data);
  });

  it("encodes the empty messages exactly and checkEmpty accepts them", () => {
    const cases: [Buffer, string][] = [
      [encodeSync(), "S"],
      [encodeFlush(), "H"],
      [encodeCopyDone(), "c"],
      [encodeTerminate(), "X"],
    ];
    for (const [msg, type] of cases) {
      expect([...msg]).toEqual([type.charCodeAt(0), 0, 0, 0, 4]);
      expect(checkEmpty(msg, type)).toBe(true);
    }
  });
});

// Round trips: backend --------------------------------------------------------------------------

describe("backend messages round-trip", () => {
  test.prop([authArb], RUNS)("Authentication variants", (a) => {
    const msg = encodeAuthentication(a);
    expectFramed(msg, Backend.Authentication);
    expect(ok(decodeAuthentication(msg))).toEqual(a);
  });

  it("encodes AuthenticationOk and AuthenticationSASL byte for byte", () => {
    expect([...encodeAuthentication({ kind: "Ok" })]).toEqual([0x52, 0, 0, 0, 8, 0, 0, 0, 0]);
    expect(encodeAuthentication({ kind: "SASL", mechanisms: ["SCRAM-SHA-256"] })).toEqual(
      Buffer.concat([Buffer.from([0x52, 0, 0, 0, 23, 0, 0, 0, 10]), Buffer.from("SCRAM-SHA-256\0\0")]),
    );
  });

  test.prop([text(), text(60)], RUNS)("ParameterStatus", (name, value) => {
    const msg = encodeParameterStatus(name, value);
    expectFramed(msg, Backend.ParameterStatus);
    expect(ok(decodeParameterStatus(msg))).toEqual({ name, value });
  });

  test.prop([int32, bytes(256, 4)], RUNS)("BackendKeyData with 4..256-byte secrets", (processId, secret) => {
    const msg = encodeBackendKeyData({ processId, secret });
    expectFramed(msg, Backend.BackendKeyData);
    expect(msg.length).toBe(9 + secret.length);
    expect(ok(decodeBackendKeyData(msg))).toEqual({ processId, secret });
  });

  it("BackendKeyData's secret owns its bytes: it does not keep the read it was cut from alive", () => {
    const msg = encodeBackendKeyData({ processId: 7, secret: Buffer.from([1, 2, 3, 4]) });
    // As a login reads it: a view into a larger buffer, as Node's pooled copies are.
    const read = Buffer.alloc(65_536);
    msg.copy(read, 100);
    const key = ok(decodeBackendKeyData(read.subarray(100, 100 + msg.length)));
    expect([...key.secret]).toEqual([1, 2, 3, 4]);
    expect(key.secret.buffer.byteLength).toBe(4);
  });

  test.prop([negotiateArb], RUNS)("NegotiateProtocolVersion", (n) => {
    const msg = encodeNegotiateProtocolVersion(n);
    expectFramed(msg, Backend.NegotiateProtocolVersion);
    expect(ok(decodeNegotiateProtocolVersion(msg))).toEqual(n);
  });

  it("ReadyForQuery for each transaction status", () => {
    for (const status of ["I", "T", "E"] as const) {
      const msg = encodeReadyForQuery(status);
      expect([...msg]).toEqual([0x5a, 0, 0, 0, 5, status.charCodeAt(0)]);
      expect(ok(decodeReadyForQuery(msg))).toBe(status);
      expect(readyStatusCode(msg)).toBe(status.charCodeAt(0));
    }
    expect(readyStatusCode(raw(Backend.ReadyForQuery, [0x49, 0x49]))).toBe(-1);
  });

  test.prop([fieldsArb], RUNS)("ErrorResponse and NoticeResponse fields, in order", (fields) => {
    const err = encodeErrorFields(fields);
    const notice = encodeNoticeFields(fields);
    expectFramed(err, Backend.ErrorResponse);
    expectFramed(notice, Backend.NoticeResponse);
    expect([...ok(decodeFields(err))]).toEqual([...fields]);
    expect([...ok(decodeFields(notice))]).toEqual([...fields]);
  });

  test.prop([text(80), fc.option(text(), { nil: undefined }), fc.option(text(), { nil: undefined })], RUNS)(
    "encodeError and encodeNotice write S, V, C, M first, then D and H",
    (message, detail, hint) => {
      const err = ok(decodeFields(encodeError({ severity: "FATAL", code: "08P01", message, detail, hint })));
      const expected: [string, string][] = [
        ["S", "FATAL"],
        ["V", "FATAL"],
        ["C", "08P01"],
        ["M", message],
      ];
      if (detail !== undefined) expected.push(["D", detail]);
      if (hint !== undefined) expected.push(["H", hint]);
      expect([...err]).toEqual(expected);
      const notice = encodeNotice({ severity: "NOTICE", code: "00000", message });
      expect(notice[0]).toBe(Backend.NoticeResponse);
      expect([...ok(decodeFields(notice))]).toEqual([
        ["S", "NOTICE"],
        ["V", "NOTICE"],
        ["C", "00000"],
        ["M", message],
      ]);
    },
  );

  test.prop([text(60)], RUNS)("CommandComplete", (tag) => {
    const msg = encodeCommandComplete(tag);
    expectFramed(msg, Backend.CommandComplete);
    expect(ok(decodeCommandComplete(msg))).toBe(tag);
  });

  test.prop([copyResponseArb], RUNS)("CopyInResponse, CopyOutResponse, CopyBothResponse", (c) => {
    for (const [encode, type] of [
      [encodeCopyInResponse, Backend.CopyInResponse],
      [encodeCopyOutResponse, Backend.CopyOutResponse],
      [encodeCopyBothResponse, Backend.CopyBothResponse],
    ] as const) {
      const msg = encode(c);
      expectFramed(msg, type);
      expect(ok(decodeCopyResponse(msg))).toEqual(c);
    }
  });

  test.prop([notificationArb], RUNS)("NotificationResponse", (n) => {
    const msg = encodeNotification(n);
    expectFramed(msg, Backend.NotificationResponse);
    expect(ok(decodeNotification(msg))).toEqual(n);
  });
});

// Round trips: first packets --------------------------------------------------------------------

describe("first packets round-trip", () => {
  test.prop([startupParamsArb, fc.constantFrom(0, 2)], RUNS)(
    "StartupMessage 3.0 and 3.2 with arbitrary parameters, in order",
    (parameters, minor) => {
      const packet = encodeStartup(parameters, minor);
      expect(packet.readInt32BE(0)).toBe(packet.length);
      expect(packet.readInt32BE(4)).toBe(0x30000 + minor);
      expect(firstPacketLength(packet)).toBe(packet.length);
      const d = ok(decodeFirstPacket(packet));
      expect(d.kind).toBe("Startup");
      if (d.kind !== "Startup") return;
      expect(d.major).toBe(3);
      expect(d.minor).toBe(minor);
      expect([...d.parameters]).toEqual([...parameters]);
    },
  );

  test.prop([int32, fc.oneof(bytes(4, 4), bytes(256, 5))], RUNS)(
    "CancelRequest with a 4-byte (3.0) or longer (3.2) secret",
    (processId, secret) => {
      const packet = encodeCancelRequest(processId, secret);
      expect(packet.length).toBe(12 + secret.length);
      expect(packet.readInt32BE(4)).toBe(80877102);
      expect(firstPacketLength(packet)).toBe(packet.length);
      expect(ok(decodeFirstPacket(packet))).toEqual({ kind: "CancelRequest", processId, secret });
    },
  );

  it("SSLRequest and GSSENCRequest", () => {
    expect([...encodeSSLRequest()]).toEqual([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    expect([...encodeGSSENCRequest()]).toEqual([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    expect(firstPacketLength(encodeSSLRequest())).toBe(8);
    expect(decodeFirstPacket(encodeSSLRequest())).toEqual({ kind: "SSLRequest" });
    expect(decodeFirstPacket(encodeGSSENCRequest())).toEqual({ kind: "GSSENCRequest" });
  });
});

// Malformed input -------------------------------------------------------------------------------

/** Decoders whose message format is self-delimiting: every strict prefix and every extension is invalid. */
const strictCases: fc.Arbitrary<{ name: string; msg: Buffer; decode: (m: Buffer) => unknown }> = fc.oneof(
  text(40).map((s) => ({ name: "Query", msg: encodeQuery(s), decode: decodeQuery })),
  parseArb.map((p) => ({ name: "Parse", msg: encodeParse(p), decode: decodeParse })),
  bindArb.map((b) => ({ name: "Bind", msg: encodeBind(b), decode: decodeBind })),
  targetArb.map((d) => ({ name: "Describe", msg: encodeDescribe(d), decode: decodeDescribe })),
  targetArb.map((d) => ({ name: "Close", msg: encodeClose(d), decode: decodeClose })),
  executeArb.map((e) => ({ name: "Execute", msg: encodeExecute(e), decode: decodeExecute })),
  text().map((s) => ({ name: "CopyFail", msg: encodeCopyFail(s), decode: decodeCopyFail })),
  functionCallArb.map((f) => ({
    name: "FunctionCall",
    msg: encodeFunctionCall(f),
    decode: decodeFunctionCall,
  })),
  text().map((s) => ({
    name: "PasswordMessage",
    msg: encodePasswordMessage(s),
    decode: decodePasswordMessage,
  })),
  fc.tuple(text(), fc.option(bytes(), { nil: null })).map(([m, d]) => ({
    name: "SASLInitialResponse",
    msg: encodeSASLInitialResponse(m, d),
    decode: decodeSASLInitialResponse,
  })),
  fc.constantFrom(encodeSync(), encodeFlush(), encodeCopyDone(), encodeTerminate()).map((msg) => ({
    name: "empty",
    msg,
    decode: (m: Buffer) => checkEmpty(m, "Sync"),
  })),
  authArb
    .filter((a) => a.kind !== "SASLContinue" && a.kind !== "SASLFinal" && a.kind !== "Unsupported")
    .map((a) => ({ name: "Authentication", msg: encodeAuthentication(a), decode: decodeAuthentication })),
  fc.tuple(text(), text()).map(([n, v]) => ({
    name: "ParameterStatus",
    msg: encodeParameterStatus(n, v),
    decode: decodeParameterStatus,
  })),
  negotiateArb.map((n) => ({
    name: "NegotiateProtocolVersion",
    msg: encodeNegotiateProtocolVersion(n),
    decode: decodeNegotiateProtocolVersion,
  })),
  fc.constantFrom("I" as const, "T" as const, "E" as const).map((s) => ({
    name: "ReadyForQuery",
    msg: encodeReadyForQuery(s),
    decode: decodeReadyForQuery,
  })),
  fieldsArb.map((f) => ({ name: "ErrorResponse", msg: encodeErrorFields(f), decode: decodeFields })),
  text().map((t) => ({
    name: "CommandComplete",
    msg: encodeCommandComplete(t),
    decode: decodeCommandComplete,
  })),
  copyResponseArb.map((c) => ({
    name: "CopyResponse",
    msg: encodeCopyInResponse(c),
    decode: decodeCopyResponse,
  })),
  notificationArb.map((n) => ({
    name: "NotificationResponse",
    msg: encodeNotification(n),
    decode: decodeNotification,
  })),
  fc.tuple(startupParamsArb, fc.constantFrom(0, 2)).map(([p, minor]) => ({
    name: "StartupMessage",
    msg: encodeStartup(p, minor),
    decode: decodeFirstPacket,
  })),
  fc.constantFrom(encodeSSLRequest(), encodeGSSENCRequest()).map((msg) => ({
    name: "SSLRequest",
    msg,
    decode: decodeFirstPacket,
  })),
);

describe("malformed messages are 08P01 error values, never exceptions", () => {
  test.prop([strictCases, fc.nat()], { numRuns: 300 })(
    "every truncated body is rejected",
    ({ msg, decode }, cut) => {
      const prefix = msg.subarray(0, cut % msg.length);
      expectProtocolError(decode(prefix));
      // The same with the length field rewritten to match, as a framer would hand it over.
      const untagged = decode === decodeFirstPacket;
      if (prefix.length >= (untagged ? 4 : 5)) {
        const framed = Buffer.from(prefix);
        if (untagged) framed.writeInt32BE(framed.length, 0);
        else framed.writeInt32BE(framed.length - 1, 1);
        expectProtocolError(decode(framed));
      }
    },
  );

  test.prop([strictCases, bytes(16, 1)], { numRuns: 300 })(
    "trailing bytes are rejected",
    ({ msg, decode }, extra) => {
      expectProtocolError(decode(Buffer.concat([msg, extra])));
    },
  );

  const anyDecoder = fc.constantFrom(
    decodeQuery,
    decodeParse,
    decodeBind,
    decodeDescribe,
    decodeClose,
    decodeExecute,
    decodeCopyFail,
    decodeFunctionCall,
    decodePasswordMessage,
    decodeSASLInitialResponse,
    decodeAuthentication,
    decodeParameterStatus,
    decodeBackendKeyData,
    decodeNegotiateProtocolVersion,
    decodeReadyForQuery,
    decodeFields,
    decodeCommandComplete,
    decodeCopyResponse,
    decodeNotification,
    (m: Buffer) => checkEmpty(m, "Sync"),
  );

  test.prop([anyDecoder, fc.integer({ min: 0, max: 255 }), bytes(64)], { numRuns: 300 })(
    "arbitrary bodies decode to a value or a PGW_PROTOCOL error",
    (decode, type, body) => {
      const out = decode(raw(type, body));
      if (isPgwardenError(out)) expectProtocolError(out);
    },
  );

  test.prop([bytes(80)], { numRuns: 300 })(
    "arbitrary first packets decode to a value, an unsupported protocol (0A000), a silent drop or PGW_PROTOCOL",
    (packet) => {
      const out = decodeFirstPacket(packet);
      if (!isPgwardenError(out)) return;
      if (out.code === "PGW_UNSUPPORTED_PROTOCOL" || out.code === "PGW_UNSUPPORTED_PROTOCOL_V2")
        expect(out.sqlstate).toBe("0A000");
      else if (out.code === "PGW_STARTUP_INVALID") expect(isSilent(out)).toBe(true);
      else expectProtocolError(out);
    },
  );

  it("rejects strings without their NUL terminator", () => {
    expectProtocolError(
      decodeQuery(raw(Frontend.Query, Buffer.from("SELECT 1"))),
      "invalid Query message: query string is not NUL-terminated",
    );
    expectProtocolError(
      decodeParse(raw(Frontend.Parse, Buffer.from("s1\0SELECT 1"))),
      "invalid Parse message: query string is not NUL-terminated",
    );
    expectProtocolError(
      decodeDescribe(raw(Frontend.Describe, Buffer.from("Sstmt"))),
      "invalid Describe message: name is not NUL-terminated",
    );
    expectProtocolError(
      decodePasswordMessage(raw(Frontend.Password, Buffer.from("secret"))),
      "invalid PasswordMessage message: password is not NUL-terminated",
    );
    expectProtocolError(
      decodeCopyFail(raw(Frontend.CopyFail, Buffer.from("bad row"))),
      "invalid CopyFail message: error message is not NUL-terminated",
    );
    expectProtocolError(
      decodeParameterStatus(raw(Backend.ParameterStatus, Buffer.from("TimeZone\0UTC"))),
      "invalid ParameterStatus message: parameter value is not NUL-terminated",
    );
    expectProtocolError(
      decodeCommandComplete(raw(Backend.CommandComplete, Buffer.from("SELECT 1"))),
      "invalid CommandComplete message: command tag is not NUL-terminated",
    );
    expectProtocolError(
      decodeNotification(
        raw(Backend.NotificationResponse, Buffer.concat([be32(7), cstr("chan"), Buffer.from("x")])),
      ),
      "invalid NotificationResponse message: payload is not NUL-terminated",
    );
    // The field list ends with a zero byte; here it just stops.
    expectProtocolError(
      decodeFields(raw(Backend.ErrorResponse, Buffer.from("SERROR\0C08P01\0"))),
      "invalid ErrorResponse/NoticeResponse message: field type runs past the end of the message",
    );
    expectProtocolError(
      decodeAuthentication(raw(Backend.Authentication, Buffer.concat([be32(10), cstr("SCRAM-SHA-256")]))),
      "invalid Authentication message: mechanism is not NUL-terminated",
    );
    // A startup packet whose parameter list lacks the final terminator.
    const startup = encodeStartup(new Map([["user", "alice"]]));
    const unterminated = Buffer.from(startup.subarray(0, startup.length - 1));
    unterminated.writeInt32BE(unterminated.length, 0);
    expectProtocolError(
      decodeFirstPacket(unterminated),
      "invalid startup packet message: parameter name is not NUL-terminated",
    );
    // A NUL that lies beyond the message end must not count.
    const q = Buffer.concat([raw(Frontend.Query, Buffer.from("SELECT 1")), Buffer.from([0])]);
    expectProtocolError(decodeQuery(q.subarray(0, q.length - 1)));
  });

  it("rejects negative counts and lengths", () => {
    expectProtocolError(
      decodeNegotiateProtocolVersion(
        raw(Backend.NegotiateProtocolVersion, Buffer.concat([be32(2), be32(-1)])),
      ),
      "invalid NegotiateProtocolVersion message: negative option count",
    );
    expectProtocolError(
      decodeBind(
        raw(Frontend.Bind, Buffer.concat([cstr(""), cstr(""), be16(0), be16(1), be32(-2), be16(0)])),
      ),
      "invalid Bind message: invalid parameter length -2",
    );
    expectProtocolError(
      decodeFunctionCall(
        raw(Frontend.FunctionCall, Buffer.concat([be32(177), be16(0), be16(1), be32(-7), be16(0)])),
      ),
      "invalid FunctionCall message: invalid argument length -7",
    );
    expectProtocolError(
      decodeSASLInitialResponse(raw(Frontend.Password, Buffer.concat([cstr("SCRAM-SHA-256"), be32(-2)]))),
      "invalid SASLInitialResponse message: invalid data length -2",
    );
    // Int16 counts of 0x8000..0xFFFF with nothing behind them: rejected (too little data).
    for (const count of [0x8000, 0xffff]) {
      expectProtocolError(
        decodeParse(raw(Frontend.Parse, Buffer.concat([cstr(""), cstr("SELECT 1"), be16(count)]))),
      );
      expectProtocolError(decodeBind(raw(Frontend.Bind, Buffer.concat([cstr(""), cstr(""), be16(count)]))));
      expectProtocolError(
        decodeBind(raw(Frontend.Bind, Buffer.concat([cstr(""), cstr(""), be16(0), be16(count)]))),
      );
      expectProtocolError(
        decodeBind(raw(Frontend.Bind, Buffer.concat([cstr(""), cstr(""), be16(0), be16(0), be16(count)]))),
      );
      expectProtocolError(
        decodeFunctionCall(raw(Frontend.FunctionCall, Buffer.concat([be32(177), be16(count)]))),
      );
      expectProtocolError(
        decodeCopyResponse(raw(Backend.CopyInResponse, Buffer.concat([Buffer.from([0]), be16(count)]))),
      );
    }
  });

  it("rejects other impossible values", () => {
    expectProtocolError(
      decodeReadyForQuery(raw(Backend.ReadyForQuery, Buffer.from("X"))),
      "invalid ReadyForQuery message: unknown transaction status 'X'",
    );
    expectProtocolError(
      decodeDescribe(raw(Frontend.Describe, Buffer.from("Xname\0"))),
      "invalid Describe message: target must be 'S' or 'P', got 0x58",
    );
    expectProtocolError(
      decodeBind(
        raw(
          Frontend.Bind,
          Buffer.concat([
            cstr(""),
            cstr(""),
            be16(2),
            be16(1),
            be16(1),
            be16(3),
            be32(-1),
            be32(-1),
            be32(-1),
            be16(0),
          ]),
        ),
      ),
      "invalid Bind message: 2 parameter formats for 3 parameters",
    );
    expectProtocolError(
      decodeBackendKeyData(raw(Backend.BackendKeyData, Buffer.concat([be32(1), Buffer.alloc(3)]))),
      "invalid BackendKeyData message: secret key of 3 bytes",
    );
    expectProtocolError(
      decodeBackendKeyData(raw(Backend.BackendKeyData, Buffer.concat([be32(1), Buffer.alloc(257)]))),
      "invalid BackendKeyData message: secret key of 257 bytes",
    );
    // Cancel packets of the wrong size: PostgreSQL closes without a word, so the code says so.
    for (const n of [0, 3, 257]) {
      const cancel = encodeCancelRequest(1, Buffer.alloc(n, 7));
      expect(decodeFirstPacket(cancel)).toEqual({
        _tag: "PgwardenError",
        code: "PGW_STARTUP_INVALID",
        sqlstate: "08P01",
        message: `invalid length of query cancel packet: ${cancel.length}`,
      });
    }
    const dup = Buffer.concat([
      be32(0),
      be32(0x30000),
      cstr("user"),
      cstr("a"),
      cstr("user"),
      cstr("b"),
      Buffer.from([0]),
    ]);
    dup.writeInt32BE(dup.length, 0);
    expectProtocolError(decodeFirstPacket(dup), 'invalid startup packet message: duplicate parameter "user"');
    const sslPlus = Buffer.concat([encodeSSLRequest(), Buffer.from([0])]);
    sslPlus.writeInt32BE(9, 0);
    expectProtocolError(
      decodeFirstPacket(sslPlus),
      "invalid startup packet message: SSLRequest has 1 unexpected trailing bytes",
    );
    expectProtocolError(
      checkEmpty(raw(Frontend.Sync, [1, 2]), "Sync"),
      "invalid Sync message: Sync has 2 unexpected trailing bytes",
    );
  });
});

describe("firstPacketLength", () => {
  it("recognises a TLS handshake record from its first byte", () => {
    expect(firstPacketLength(Buffer.from([0x16]))).toBe("direct-tls");
    expect(firstPacketLength(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]))).toBe("direct-tls");
    expect(decodeFirstPacket(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]))).toEqual({ kind: "DirectTLS" });
  });

  test.prop([bytes(3)], RUNS)("needs four bytes before it can tell", (b) => {
    fc.pre(b[0] !== 0x16);
    expect(firstPacketLength(b)).toBe("need-more");
  });

  test.prop([fc.integer({ min: -(2 ** 31), max: 7 }), bytes(8)], RUNS)(
    "a length under 8 is an error PostgreSQL answers with silence",
    (len, rest) => {
      const out = firstPacketLength(Buffer.concat([be32(len), rest]));
      expect(out).toEqual({
        _tag: "PgwardenError",
        code: "PGW_STARTUP_INVALID",
        sqlstate: "08P01",
        message: `invalid length of startup packet: ${len}`,
      });
      expect(isSilent(out as PgwardenError)).toBe(true);
    },
  );

  test.prop([fc.integer({ min: 8, max: 10_004 })], RUNS)(
    "a length of 8..10004 is the packet length (PostgreSQL's limit leaves out the length word)",
    (len) => {
      expect(firstPacketLength(be32(len))).toBe(len);
    },
  );

  test.prop([fc.integer({ min: 10_005, max: 2 ** 31 - 1 })], RUNS)(
    "a length over 10004 is PGW_STARTUP_TOO_LARGE, answered with silence (or direct TLS when it starts with 0x16)",
    (len) => {
      const out = firstPacketLength(be32(len));
      if (len >>> 24 === 0x16) {
        expect(out).toBe("direct-tls");
        return;
      }
      expect(out).toEqual({
        _tag: "PgwardenError",
        code: "PGW_STARTUP_TOO_LARGE",
        sqlstate: "08P01",
        message: `invalid length of startup packet: ${len}`,
      });
      expect(isSilent(out as PgwardenError)).toBe(true);
    },
  );

  test.prop([fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff })], RUNS)(
    "an unsupported major protocol version is PGW_UNSUPPORTED_PROTOCOL (0A000, as PostgreSQL answers)",
    (major, minor) => {
      fc.pre(major !== 3 && !(major === 1234 && minor >= 5678 && minor <= 5680));
      const packet = Buffer.concat([be32(9), be32(major * 0x10000 + minor), Buffer.from([0])]);
      expect(firstPacketLength(packet)).toBe(9);
      expect(decodeFirstPacket(packet)).toEqual({
        _tag: "PgwardenError",
        // Protocol 1 and 2 clients are answered in protocol 2's error format.
        code: major < 3 ? "PGW_UNSUPPORTED_PROTOCOL_V2" : "PGW_UNSUPPORTED_PROTOCOL",
        sqlstate: "0A000",
        message: `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.2`,
      });
    },
  );
});

/**
 * PostgreSQL reads every Int16 count of Parse, Bind and FunctionCall with pq_getmsgint(msg, 2),
 * which is unsigned: 0..65535 parameters are legal, and libpq and node-postgres send up to 65535.
 * Read as signed, counts of 32768..65535 would look negative and be refused.
 */
describe("Int16 counts are unsigned, as in PostgreSQL", () => {
  it("round-trips a Bind with 40000 parameters", () => {
    const b: Bind = {
      portal: "",
      statement: "bulk",
      paramFormats: [1],
      params: Array.from({ length: 40_000 }, (_, i) => (i % 2 === 0 ? null : be32(i))),
      resultFormats: [],
    };
    let msg: Buffer | undefined;
    expect(() => {
      msg = encodeBind(b);
    }).not.toThrow();
    expect(msg!.readUInt16BE(5 + 1 + 5 + 2 + 2)).toBe(40_000);
    expect(ok(decodeBind(msg!)).params.length).toBe(40_000);
  });

  it("decodes a Parse declaring 40000 parameter types", () => {
    const types = Buffer.alloc(4 * 40_000);
    for (let i = 0; i < 40_000; i++) types.writeUInt32BE(23, 4 * i);
    const msg = raw(
      Frontend.Parse,
      Buffer.concat([cstr("bulk"), cstr("INSERT INTO t VALUES ($1)"), be16(40_000), types]),
    );
    const d = ok(decodeParse(msg));
    expect(d.paramTypes.length).toBe(40_000);
    expect(d.paramTypes[39_999]).toBe(23);
  });
});
