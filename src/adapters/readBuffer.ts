import type { OnReadOpts, Socket } from "node:net";

/**
 * Who takes a socket's reads once its login is over: the relay. `readsReleased` says, after
 * each chunk, whether anything still refers to it (a write to the peer not yet taken by the
 * kernel); if nothing does, the next read lands in the same buffer.
 */
export interface ReadSink {
  socketData(chunk: Buffer): void;
  readsReleased(): boolean;
}

/** Large enough for any read libuv makes (it reads at most 64 KiB at a time). */
const READ_BUFFER_BYTES = 65_536;

const kSink = Symbol("pgwarden.readSink");
const kOwnBuffer = Symbol("pgwarden.ownReadBuffer");
type Reading = Socket & { [kSink]?: ReadSink; [kOwnBuffer]?: true };

/**
 * `onread` options for a plain TCP connection: every read lands in one buffer of the
 * connection's own, reused while the relay holds nothing of the last read, instead of a new
 * 64 KiB allocation per read (a relay writes each read straight on, so almost always nothing is
 * held). Until a sink takes over (the login exchange, whose messages are kept), each read is
 * copied out and emitted as `data`, as Node would.
 */
export const ownReadBuffer = (): OnReadOpts => {
  let shared = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
  let released = true;
  return {
    buffer: () => {
      // Something still refers to the last read: it keeps that buffer, the socket gets another.
      if (!released) shared = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
      released = true;
      return shared;
    },
    callback(this: Reading, n: number, buf: Uint8Array): boolean {
      const sink = this[kSink];
      if (sink === undefined) {
        this.emit("data", Buffer.from(buf.subarray(0, n)));
        return true;
      }
      sink.socketData((buf as Buffer).subarray(0, n));
      released = sink.readsReleased();
      return true;
    },
  } as OnReadOpts;
};

/** Marks a socket made with `ownReadBuffer`, for `sinkReads` to know. */
export const markOwnBuffer = (socket: Socket): Socket => {
  (socket as Reading)[kOwnBuffer] = true;
  return socket;
};

/**
 * Hands every later read of a socket made with `ownReadBuffer` to `sink`; false (nothing done)
 * for any other socket, whose reads stay `data` events.
 */
export const sinkReads = (socket: Socket, sink: ReadSink): boolean => {
  const s = socket as Reading;
  if (s[kOwnBuffer] !== true) return false;
  s[kSink] = sink;
  return true;
};
