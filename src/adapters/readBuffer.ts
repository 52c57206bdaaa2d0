import type { OnReadOpts, Socket } from "node:net";

/** What a sink's `afterRead` reports, as bits. */
export const READ_HELD = 1;
/** Nothing is owed by the peer: it sends again only when asked (or to end), a small answer most often. */
export const READ_WAITING = 2;

/**
 * Who takes a socket's reads once its login is over: the relay. After each chunk `afterRead`
 * says whether anything still refers to it (READ_HELD: a write to the client not yet taken by
 * the kernel) and whether the peer now waits to be asked (READ_WAITING).
 */
export interface ReadSink {
  socketData(chunk: Buffer): void;
  afterRead(): number;
}

/**
 * Where logins read: one buffer for the process, copied out at once (the login keeps its
 * messages), so nothing refers to it after a read.
 */
const LOGIN_BYTES = 16_384;
const login = Buffer.allocUnsafeSlow(LOGIN_BYTES);

/**
 * A waiting connection's buffer: a slot of a shared slab, enough for the usual answer to a
 * request (pgbench's are 100–200 bytes). A longer answer takes one more read, into the large
 * buffer. Slots are never handed out twice; a slab is freed once its last connection is gone.
 * Not Node's own pool (`Buffer.allocUnsafe`): the login's copies come from there, so a
 * long-lived slot would keep a chunk of dead login messages alive with it.
 */
const SMALL_BYTES = 256;
/** One page: a long-lived idle connection pins at most this much of a slab. */
const SLAB_BYTES = 4096;
let slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
let slabUsed = 0;
const smallSlot = (): Buffer => {
  if (slabUsed === SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    slabUsed = 0;
  }
  slabUsed += SMALL_BYTES;
  return slab.subarray(slabUsed - SMALL_BYTES, slabUsed);
};

/** As much as libuv reads at a time: a busy connection's, taken from the spares and given back. */
const LARGE_BYTES = 65_536;
/**
 * While the client's socket still queues the last read, a read shorter than this is copied out
 * rather than left in a buffer of its own: a client that stops reading amid a stream of small
 * messages (a loop of NOTICEs, each flushed) must not pin 64 KiB per message. The limit on
 * queued bytes counts bytes, not the buffers behind them; with this, a held large buffer holds
 * at least a quarter of its size.
 */
const COPY_BELOW = LARGE_BYTES / 4;
/** Large buffers kept for the next connection that becomes busy; beyond these, left to the GC. */
const SPARE_LIMIT = 64;
const spares: Buffer[] = [];

const kSink = Symbol("pgwarden.readSink");
const kOwnBuffer = Symbol("pgwarden.ownReadBuffer");
type Reading = Socket & { [kSink]?: ReadSink; [kOwnBuffer]?: true };

/**
 * `onread` options for a plain TCP connection, instead of the new 64 KiB allocation Node makes
 * per read by default. Once a sink has taken over, the relay forwards views of the read (no
 * copy, but for short reads while the client's socket still queues the last one), and the next
 * read goes where it fits: a small slot of the connection's own while the
 * peer owes nothing (so an idle connection holds 256 bytes), a large buffer from a spare list
 * while answers stream in (given back once the peer owes nothing again). A buffer something
 * still refers to (a write the client's socket has queued) is never read into again: the
 * connection takes another and leaves it to whatever holds it. Until a sink takes over (the
 * login exchange, whose messages are kept), each read is copied out and emitted as `data`.
 */
export const ownReadBuffer = (): OnReadOpts => {
  let sinking = false;
  let small: Buffer | undefined;
  let large: Buffer | undefined;
  let last: Buffer | undefined;
  let state = READ_WAITING;
  /** The client's socket still queued the last read: the next will most likely queue too. */
  let queued = false;
  return {
    buffer: () => {
      if (!sinking) return login;
      if ((state & READ_HELD) !== 0) {
        // The last read is still referred to: leave its buffer to the holder.
        if (last === small) small = undefined;
        else large = undefined;
      }
      if ((state & READ_WAITING) === 0) {
        large ??= spares.pop() ?? Buffer.allocUnsafeSlow(LARGE_BYTES);
        last = large;
        return large;
      }
      if (large !== undefined && spares.length < SPARE_LIMIT) spares.push(large);
      large = undefined;
      small ??= smallSlot();
      last = small;
      return small;
    },
    callback(this: Reading, n: number, buf: Uint8Array): boolean {
      const sink = this[kSink];
      const view = (buf as Buffer).subarray(0, n);
      if (sink === undefined) {
        this.emit("data", Buffer.from(view));
        return true;
      }
      // The first read after the hand-over may still have landed in the login buffer.
      const copy = buf === login || (queued && n < COPY_BELOW);
      sink.socketData(copy ? Buffer.from(view) : view);
      state = sink.afterRead();
      queued = (state & READ_HELD) !== 0;
      // A copy is what the client's socket holds, not the buffer.
      if (copy) state &= ~READ_HELD;
      sinking = true;
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
