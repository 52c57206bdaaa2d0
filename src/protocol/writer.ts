/**
 * Builds outgoing messages. Sizes are computed first so each message is one allocation.
 */
export class Writer {
  private readonly buf: Buffer;
  private pos = 0;

  private constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  /** A tagged message: type byte, then int32 length covering itself and the body. */
  static message(type: number, bodyLength: number): Writer {
    const w = new Writer(5 + bodyLength);
    w.byte(type);
    w.int32(4 + bodyLength);
    return w;
  }

  /** The untagged first packet (startup, cancel, SSLRequest): int32 length, then the body. */
  static untagged(bodyLength: number): Writer {
    const w = new Writer(4 + bodyLength);
    w.int32(4 + bodyLength);
    return w;
  }

  byte(v: number): this {
    this.buf[this.pos++] = v;
    return this;
  }

  int16(v: number): this {
    this.buf.writeInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }

  uint16(v: number): this {
    this.buf.writeUInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }

  int32(v: number): this {
    this.buf.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }

  bytes(v: Uint8Array): this {
    this.buf.set(v, this.pos);
    this.pos += v.length;
    return this;
  }

  cstring(v: string): this {
    this.pos += this.buf.write(v, this.pos, "utf8");
    this.buf[this.pos++] = 0;
    return this;
  }

  /** Runs a block of writes that do not chain (loops, conditionals). */
  apply(f: (w: this) => void): this {
    f(this);
    return this;
  }

  end(): Buffer {
    if (this.pos !== this.buf.length)
      throw new Error(`writer size mismatch: wrote ${this.pos} of ${this.buf.length}`);
    return this.buf;
  }
}

/** Bytes a string takes as a NUL-terminated UTF-8 cstring. */
export const cstringSize = (s: string): number => Buffer.byteLength(s, "utf8") + 1;
