import type { Socket } from "node:net";
import { clearArray } from "../clearArray.ts";
import { type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import { DROP, MessageScanner, type ScanPolicy } from "../protocol/MessageScanner.ts";

export type Next = Buffer | PgwardenError | "closed";

/**
 * Reads whole messages from a socket one at a time, for the request/response exchanges of the
 * startup and authentication phases. The relay takes over afterwards with `handOff`.
 *
 * Bounded: once a read has produced a whole message the socket is paused until that message is
 * taken, so a peer that floods ahead of the exchange fills its own TCP window, not pgwarden's
 * memory (at most one read of unconsumed messages is held). After a malformed message nothing
 * more is read.
 *
 * A message of a type the next phase reads (`readAhead`: a Query sent in the same write as the
 * last authentication message, which PostgreSQL answers after ReadyForQuery) stops the reading
 * too, but is no violation yet: its bytes, unread, go to the next phase with `handOff`. Only if
 * the exchange asks for another message of its own does it get the violation.
 */
export class MessageStream {
  private readonly socket: Socket;
  private readonly scanner: MessageScanner;
  private readonly queue: Buffer[] = [];
  private failure: PgwardenError | "closed" | undefined;
  private waiter: ((m: Next) => void) | undefined;
  private readonly sink: Uint8Array[] = [];
  private readonly readAhead: Uint8Array | undefined;
  /** Bytes of the next phase that stopped the reading: not scanned here. */
  private rest: Buffer | undefined;
  private readonly onData = (chunk: Buffer) => {
    if (this.failure !== undefined) return;
    const err = this.scanner.scan(chunk, this.sink);
    clearArray(this.sink);
    if (err !== undefined) {
      const at = this.scanner.stoppedAt;
      if (at >= 0 && this.readAhead?.[chunk[at]!] === 1) this.rest = chunk.subarray(at);
      this.fail(err);
      this.detach();
      this.socket.pause();
    } else if (this.queue.length > 0) this.socket.pause();
    this.wake();
  };
  private readonly onEnd = () => {
    this.fail("closed");
    this.wake();
  };

  constructor(socket: Socket, policy: ScanPolicy, leftover?: Buffer, readAhead?: Uint8Array) {
    this.socket = socket;
    this.readAhead = readAhead;
    this.scanner = new MessageScanner(policy, (_type, msg) => {
      this.queue.push(msg);
      return DROP;
    });
    if (leftover !== undefined && leftover.length > 0) this.onData(leftover);
    socket.on("data", this.onData);
    socket.on("close", this.onEnd);
    socket.on("error", this.onEnd);
    // A socket handed over paused (by a previous stream or the first-packet step) reads again.
    if (this.queue.length === 0 && this.failure === undefined) socket.resume();
  }

  private fail(f: PgwardenError | "closed"): void {
    this.failure ??= f;
  }

  private wake(): void {
    const w = this.waiter;
    if (w === undefined) return;
    const m = this.take();
    if (m === undefined) return;
    this.waiter = undefined;
    w(m);
  }

  private take(): Next | undefined {
    const m = this.queue.shift();
    if (m !== undefined) {
      if (this.queue.length === 0 && this.failure === undefined && this.attached) this.socket.resume();
      return m;
    }
    return this.failure;
  }

  private attached = true;

  private detach(): void {
    this.attached = false;
    this.socket.off("data", this.onData);
    this.socket.off("close", this.onEnd);
    this.socket.off("error", this.onEnd);
  }

  /** Stops reading for good: the exchange was abandoned (the connection is ending). */
  abandon(): void {
    this.detach();
    this.fail("closed");
    this.wake();
  }

  /** The next whole message, or why there is none. */
  next(): Promise<Next> {
    const m = this.take();
    if (m !== undefined) return Promise.resolve(m);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /** Like next(), but gives up after `ms` with a timeout error. */
  nextWithin(ms: number, what: string): Promise<Next> {
    const m = this.take();
    if (m !== undefined) return Promise.resolve(m);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        resolve(
          pgwardenError("PGW_AUTH_TIMEOUT", SqlState.connectionFailure, `timed out waiting for ${what}`),
        );
      }, ms);
      this.waiter = (v) => {
        clearTimeout(timer);
        resolve(v);
      };
    });
  }

  /**
   * Stops reading and returns the messages that arrived but were not consumed. A message cut in
   * half at this point means the peer sent ahead of the protocol: that is a violation.
   */
  handOff(): Buffer[] | PgwardenError {
    this.detach();
    this.socket.pause();
    if (!this.scanner.atBoundary) return protocolError("message sent before the previous phase completed");
    // A violation no exchange has taken yet is still one: nothing may be handed on after it.
    if (this.failure !== undefined && this.failure !== "closed" && this.rest === undefined)
      return this.failure;
    const pending = this.queue.splice(0);
    if (this.rest !== undefined) pending.push(this.rest);
    this.rest = undefined;
    return pending;
  }
}
