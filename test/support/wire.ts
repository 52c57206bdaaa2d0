import { connect, type Socket } from "node:net";

export interface WireMessage {
  readonly type: string;
  readonly msg: Buffer;
}

/** Splits a buffer of backend messages; throws on bytes that do not form a whole message. */
export const splitMessages = (buf: Buffer): WireMessage[] => {
  const out: WireMessage[] = [];
  let p = 0;
  while (p < buf.length) {
    if (p + 5 > buf.length) throw new Error(`incomplete message header at ${p}`);
    const len = buf.readInt32BE(p + 1);
    if (len < 4 || p + 1 + len > buf.length) throw new Error(`incomplete message at ${p}`);
    out.push({ type: String.fromCharCode(buf[p]!), msg: buf.subarray(p, p + 1 + len) });
    p += 1 + len;
  }
  return out;
};

/** A raw protocol client for tests: collects every byte and splits backend messages. */
export class WireClient {
  readonly socket: Socket;
  private data = Buffer.alloc(0);
  closed = false;
  private waiters: (() => void)[] = [];

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on("data", (c: Buffer) => {
      this.data = Buffer.concat([this.data, c]);
      this.wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake();
    });
    socket.on("error", () => {});
  }

  static open(port: number, host = "127.0.0.1"): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host }, () => resolve(new WireClient(s)));
      s.once("error", reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(...bufs: Buffer[]): void {
    this.socket.write(Buffer.concat(bufs));
  }

  /** All bytes received so far. */
  get received(): Buffer {
    return this.data;
  }

  /** Waits until `pred` holds over the received bytes, or times out. */
  async until(pred: (c: WireClient) => boolean, ms = 5000, what = "condition"): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred(this)) {
      if (this.closed && !pred(this)) throw new Error(`connection closed before ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Backend messages received after `offset` bytes: [type char, whole message]. */
  messages(offset = 0): { type: string; msg: Buffer }[] {
    const out: { type: string; msg: Buffer }[] = [];
    let p = offset;
    const d = this.data;
    while (p + 5 <= d.length) {
      const len = d.readInt32BE(p + 1);
      if (p + 1 + len > d.length) break;
      out.push({ type: String.fromCharCode(d[p]!), msg: d.subarray(p, p + 1 + len) });
      p += 1 + len;
    }
    return out;
  }

  /** The SQLSTATE of the first ErrorResponse received, if any. */
  errorCode(offset = 0): string | undefined {
    const e = this.messages(offset).find((m) => m.type === "E");
    if (e === undefined) return undefined;
    const body = e.msg.subarray(5).toString("utf8");
    for (const f of body.split("\0")) if (f.startsWith("C")) return f.slice(1);
    return undefined;
  }

  waitClosed(ms = 3000): Promise<void> {
    return this.until((c) => c.closed, ms, "the server to close the connection");
  }

  close(): void {
    this.socket.destroy();
  }
}
