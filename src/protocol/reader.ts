import { isUtf8 } from "node:buffer";
import { type PgwardenError, protocolError } from "../errors.ts";

/** Thrown only inside this module's decoders and turned into a PgwardenError at their boundary. */
class Malformed extends Error {}

/**
 * A cursor over one message body. Reads return views into the source buffer, never copies,
 * so decoding a 64 MB Bind costs no more memory than the bytes already received.
 */
export class Reader {
  private pos: number;
  private readonly end: number;
  private readonly buf: Buffer;

  constructor(buf: Buffer, start = 0, end = buf.length) {
    this.buf = buf;
    this.pos = start;
    this.end = end;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number, what: string): void {
    if (n < 0 || this.pos + n > this.end) throw new Malformed(`${what} runs past the end of the message`);
  }

  byte(what = "byte"): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  int16(what = "int16"): number {
    this.need(2, what);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  /** Counts are unsigned 16-bit on the wire: PostgreSQL accepts up to 65,535 parameters. */
  uint16(what = "uint16"): number {
    this.need(2, what);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  int32(what = "int32"): number {
    this.need(4, what);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  uint32(what = "uint32"): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  bytes(n: number, what = "bytes"): Buffer {
    this.need(n, what);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** A NUL-terminated string; PostgreSQL strings never contain NUL. */
  cstring(what = "string"): string {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) throw new Malformed(`${what} is not NUL-terminated`);
    const v = this.buf.toString("utf8", this.pos, nul);
    this.pos = nul + 1;
    return v;
  }

  /** Like cstring, but refuses bytes that are not valid UTF-8 instead of replacing them. */
  strictCstring(what = "string"): string {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) throw new Malformed(`${what} is not NUL-terminated`);
    const bytes = this.buf.subarray(this.pos, nul);
    if (!isUtf8(bytes)) throw new Malformed(`${what} is not valid UTF-8`);
    this.pos = nul + 1;
    return bytes.toString("utf8");
  }

  rest(): Buffer {
    const v = this.buf.subarray(this.pos, this.end);
    this.pos = this.end;
    return v;
  }

  done(what: string): void {
    if (this.pos !== this.end)
      throw new Malformed(`${what} has ${this.end - this.pos} unexpected trailing bytes`);
  }
}

/**
 * A copy with memory of its own, for bytes kept for a connection's life. `Buffer.from` takes a
 * short copy out of Node's shared pool (64 KiB slabs in Node 24), so one long-lived 4-byte copy
 * keeps its whole slab, and every short-lived copy cut from it, alive.
 */
export const ownedCopy = (bytes: Uint8Array): Buffer => {
  const out = Buffer.allocUnsafeSlow(bytes.length);
  out.set(bytes);
  return out;
};

/** Runs a decoder; a malformed message becomes an 08P01 error value naming the message. */
export const decodeWith = <A>(message: string, f: () => A): A | PgwardenError => {
  try {
    return f();
  } catch (e) {
    if (e instanceof Malformed) return protocolError(`invalid ${message} message: ${e.message}`);
    throw e;
  }
};

/** Fails decoding from inside a decoder with a reason. */
export const malformed = (reason: string): never => {
  throw new Malformed(reason);
};
