/**
 * Just enough DER (X.690) to walk a certificate's outer structure: tag, length, contents. Bounds
 * are checked on every read; a malformed input yields undefined, never an exception or overread.
 */

export interface DerElement {
  readonly tag: number;
  readonly contents: Buffer;
  /** Offset of the byte after this element in the buffer it was read from. */
  readonly end: number;
}

/** Reads the element at `offset` (single-byte tags, definite lengths up to 4 length bytes). */
export const readDer = (buf: Buffer, offset = 0): DerElement | undefined => {
  if (offset + 2 > buf.length) return undefined;
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) return undefined;
  let length = buf[offset + 1]!;
  let start = offset + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count === 0 || count > 4 || start + count > buf.length) return undefined;
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[start + i]!;
    start += count;
  }
  const end = start + length;
  if (end > buf.length) return undefined;
  return { tag, contents: buf.subarray(start, end), end };
};

/** The elements directly inside a constructed element's contents. */
export const derChildren = (contents: Buffer): DerElement[] | undefined => {
  const out: DerElement[] = [];
  let p = 0;
  while (p < contents.length) {
    const e = readDer(contents, p);
    if (e === undefined) return undefined;
    out.push(e);
    p = e.end;
  }
  return out;
};

/** Dotted form of an OBJECT IDENTIFIER's contents. */
export const decodeOid = (contents: Buffer): string | undefined => {
  if (contents.length === 0) return undefined;
  const arcs: number[] = [];
  let value = 0;
  for (const byte of contents) {
    value = value * 128 + (byte & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) return undefined;
    if ((byte & 0x80) === 0) {
      arcs.push(value);
      value = 0;
    }
  }
  if ((contents.at(-1)! & 0x80) !== 0) return undefined;
  const first = arcs[0]!;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...arcs.slice(1)].join(".");
};

export const DER_SEQUENCE = 0x30;
export const DER_OID = 0x06;
