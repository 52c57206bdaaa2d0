import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";

/**
 * What a handler decides about one complete control message:
 * `undefined` forwards it as is, a Buffer replaces it (DROP removes it), an error stops the stream.
 */
export type Verdict = undefined | Uint8Array | PgwardenError;
export const DROP: Uint8Array = new Uint8Array(0);
/** What a handler receives for a type it judges without reading (see ScanPolicy.inspect). */
export const NO_BODY: Buffer = Buffer.alloc(0);

/** Called with `this` = the scanner's receiver, so an object's method needs no closure per instance. */
export type MessageHandler = (this: unknown, type: number, message: Buffer) => Verdict;

export interface ScanPolicy {
  /** Types flagged 1 exist in this direction; any other type byte is rejected on sight, before its body. */
  readonly known: Uint8Array;
  /** Who sends this direction, for the error a stray type byte gets: "frontend" or "backend". */
  readonly sender: string;
  /**
   * Types whose bytes the handler reads (flag 1). The others reach it as NO_BODY, so judging a
   * message by its type costs no view; absent, every handled type gets its bytes.
   */
  readonly inspect?: Uint8Array;
  /** Types flagged 1 stream through untouched and never reach the handler: the data path. */
  readonly streamed: Uint8Array;
  /**
   * Largest allowed value of the length field, by type: a table, since it is read for every
   * message (a call per message cost more than the lookup; see lengthTable).
   */
  readonly maxLength: Uint32Array;
}

/** Builds the 256-entry length-limit table a ScanPolicy wants. */
export const lengthTable = (limit: (type: number) => number): Uint32Array => {
  const table = new Uint32Array(256);
  for (let t = 0; t < 256; t++) table[t] = limit(t);
  return table;
};

/** Builds the 256-entry flag table a ScanPolicy wants. */
export const typeSet = (...types: number[]): Uint8Array => {
  const set = new Uint8Array(256);
  for (const t of types) set[t] = 1;
  return set;
};

const HEADER = 5;

// PostgreSQL's own wording, with the type in decimal.
const unknownType = (sender: string, type: number): PgwardenError =>
  protocolError(`invalid ${sender} message type ${type}`);

/**
 * Frames one direction of a v3 stream (after the first packet) across arbitrary chunk boundaries.
 *
 * Forwarded bytes are emitted as views of the input chunks: a chunk of whole messages that the
 * handler lets through comes out as one slice. Streamed (data-path) messages are never buffered,
 * so a 1 GB DataRow costs a 5-byte header read. Control messages split across chunks are assembled
 * once into a buffer of their exact size, so the handler always sees a whole message.
 */
export class MessageScanner {
  private readonly policy: ScanPolicy;
  private readonly handler: MessageHandler;
  private readonly receiver: unknown;
  /** A header split across chunks, as numbers: no buffer per scanner for a rare case. */
  private headLen = 0;
  private headType = 0;
  private headLength = 0;
  private held: Buffer | null = null;
  private heldPos = 0;
  private streamRemaining = 0;
  /**
   * Where in the last chunk a type byte this policy does not know stopped the scan: the bytes
   * from there on were not consumed. -1 unless the last scan ended that way.
   */
  stoppedAt = -1;

  constructor(policy: ScanPolicy, handler: MessageHandler, receiver?: unknown) {
    this.policy = policy;
    this.handler = handler;
    this.receiver = receiver;
  }

  /** Inside a streamed message: its start is already out, its end is not. */
  get midStreamed(): boolean {
    return this.streamRemaining > 0;
  }

  /** True when no message is partly received: the stream sits on a message boundary. */
  get atBoundary(): boolean {
    return this.headLen === 0 && this.held === null && this.streamRemaining === 0;
  }

  /**
   * Scans a chunk and appends what should be forwarded to `out`.
   * Returns an error (and stops) when the stream is malformed or a handler rejects a message.
   */
  scan(chunk: Buffer, out: Uint8Array[]): PgwardenError | undefined {
    const n = chunk.length;
    let pos = 0;
    let runStart = 0;

    if (this.headLen > 0) {
      let got = this.headLen;
      while (got < HEADER && pos < n) {
        this.headLength = (this.headLength << 8) | chunk[pos++]!;
        got++;
      }
      this.headLen = got;
      runStart = pos;
      if (got < HEADER) return undefined;
      this.headLen = 0;
      const type = this.headType;
      const len = this.headLength | 0;
      const bad = this.checkLength(type, len);
      if (bad !== undefined) return bad;
      if (this.policy.streamed[type] === 1) {
        const header = Buffer.allocUnsafe(HEADER);
        header[0] = type;
        header.writeInt32BE(len, 1);
        out.push(header);
        this.streamRemaining = len - 4;
      } else {
        this.held = Buffer.allocUnsafe(len + 1);
        this.held[0] = type;
        this.held.writeInt32BE(len, 1);
        this.heldPos = HEADER;
      }
    }

    if (this.streamRemaining > 0) {
      const take = Math.min(this.streamRemaining, n - pos);
      this.streamRemaining -= take;
      pos += take;
    } else if (this.held !== null) {
      const held = this.held;
      const take = Math.min(held.length - this.heldPos, n - pos);
      chunk.copy(held, this.heldPos, pos, pos + take);
      this.heldPos += take;
      pos = runStart = pos + take;
      if (this.heldPos < held.length) return undefined;
      this.held = null;
      const verdict = this.handler.call(this.receiver, held[0]!, held);
      if (verdict === undefined) out.push(held);
      else if (verdict instanceof Uint8Array) {
        if (verdict.length > 0) out.push(verdict);
      } else return verdict;
    }

    while (pos < n) {
      if (this.policy.known[chunk[pos]!] !== 1) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        this.stoppedAt = pos;
        return unknownType(this.policy.sender, chunk[pos]!);
      }
      if (n - pos < HEADER) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        this.headType = chunk[pos]!;
        this.headLength = 0;
        for (let i = pos + 1; i < n; i++) this.headLength = (this.headLength << 8) | chunk[i]!;
        this.headLen = n - pos;
        return undefined;
      }
      const type = chunk[pos]!;
      const len = chunk.readInt32BE(pos + 1);
      const bad = this.checkLength(type, len);
      if (bad !== undefined) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        return bad;
      }
      const end = pos + len + 1;
      if (this.policy.streamed[type] === 1) {
        if (end > n) {
          this.streamRemaining = end - n;
          pos = n;
          break;
        }
        pos = end;
        continue;
      }
      if (end > n) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        const held = Buffer.allocUnsafe(len + 1);
        chunk.copy(held, 0, pos, n);
        this.held = held;
        this.heldPos = n - pos;
        return undefined;
      }
      const inspect = this.policy.inspect;
      const verdict = this.handler.call(
        this.receiver,
        type,
        inspect === undefined || inspect[type] === 1 ? chunk.subarray(pos, end) : NO_BODY,
      );
      if (verdict !== undefined) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        // What came before a rejected message is still delivered: the peer may need it (an error, say).
        if (!(verdict instanceof Uint8Array)) return verdict;
        if (verdict.length > 0) out.push(verdict);
        runStart = end;
      }
      pos = end;
    }
    // Most chunks go through whole: the chunk itself, no view of it.
    if (pos > runStart) out.push(runStart === 0 && pos === n ? chunk : chunk.subarray(runStart, pos));
    return undefined;
  }

  private checkLength(type: number, len: number): PgwardenError | undefined {
    if (len < 4)
      return protocolError(`invalid message length ${len} for message type 0x${type.toString(16)}`);
    const max = this.policy.maxLength[type]!;
    if (len > max) {
      return pgwardenError(
        "PGW_MESSAGE_TOO_LARGE",
        SqlState.protocolViolation,
        `message of type 0x${type.toString(16)} is ${len} bytes, over the limit of ${max}`,
      );
    }
    return undefined;
  }
}
