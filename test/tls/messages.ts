import type { Duplex } from "node:stream";

/**
 * Reads PostgreSQL messages from a stream for tests: `next()` gives the next whole message
 * (type byte, length, body); `startup()` the next untagged one (what a client sends first).
 */
export const messageReader = (stream: Duplex) => {
  let buf = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | undefined;
  stream.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  stream.on("close", () => {
    closed = true;
    wake?.();
  });
  const take = async (header: number, lengthAt: number): Promise<Buffer> => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (buf.length >= header) {
        const total = lengthAt + buf.readInt32BE(lengthAt);
        if (buf.length >= total) {
          const msg = buf.subarray(0, total);
          buf = buf.subarray(total);
          return msg;
        }
      }
      if (closed) throw new Error("stream closed before a whole message arrived");
      if (Date.now() > deadline) throw new Error("timed out waiting for a message");
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  };
  return {
    next: () => take(5, 1),
    startup: () => take(4, 0),
  };
};

/** The SQLSTATE and message of an ErrorResponse. */
export const errorFields = (msg: Buffer): { code?: string; message?: string } => {
  const out: { code?: string; message?: string } = {};
  for (const f of msg.subarray(5).toString("utf8").split("\0")) {
    if (f.startsWith("C")) out.code = f.slice(1);
    if (f.startsWith("M")) out.message = f.slice(1);
  }
  return out;
};
