import { Duration, Effect, FiberSet, type Scope } from "effect";
import type { AuditLine } from "../adapters/audit/AuditSink.ts";
import type { SinkQueue } from "../adapters/audit/SinkQueue.ts";
import type { ChainedLine } from "./Chain.ts";
import { readSegmentRecords } from "./SegmentReader.ts";

/**
 * Feeds one remote sink's queue with durable records, in seq order, each exactly once. Live,
 * it offers each fsync'd batch as it lands; when the queue refuses a line (full: the sink has
 * been down a while) it switches to catch-up and reads the local segments from the first line
 * not taken, at the pace the queue accepts, until it reaches what is durable now; then live again.
 * The queue keeps a line until the sink acknowledges it, so nothing offered is lost either.
 */
export interface RemoteFeedOptions {
  readonly queue: SinkQueue;
  readonly required: boolean;
  readonly dir: string;
  readonly instance: string;
  /** Seq of the last record on disk. */
  readonly durableSeq: () => number;
  /** Poll interval while the queue is full during a catch-up. */
  readonly pollMs?: number;
  /** Seq the sink acknowledged last (its saved cursor): records after it are caught up first. */
  readonly resumeAfter?: number;
}

export interface RemoteFeed {
  readonly name: string;
  readonly required: boolean;
  readonly queue: SinkQueue;
  /** True while the feed reads from the segments rather than offering live. */
  readonly catchingUp: boolean;
  /** Records taken from the segments by catch-ups so far. */
  readonly caughtUp: number;
  /** Seq of the last line the queue took. */
  readonly lastOffered: number;
  durable(lines: readonly ChainedLine[]): void;
}

export const makeRemoteFeed = (o: RemoteFeedOptions): Effect.Effect<RemoteFeed, never, Scope.Scope> =>
  Effect.gen(function* () {
    const pollMs = o.pollMs ?? 20;
    let catchingUp = false;
    let caughtUp = 0;
    const durableAtStart = o.durableSeq();
    let lastOffered = Math.min(o.resumeAfter ?? durableAtStart, durableAtStart);
    // Catch-ups run in the feed's scope: closing the pipeline interrupts one under way.
    const fork = yield* FiberSet.makeRuntime<never>();
    const lineOf = (seq: number, text: string): AuditLine => ({ seq, id: `${o.instance}-${seq}`, text });

    const waitForRoom = (line: AuditLine): Effect.Effect<void> =>
      Effect.suspend(() =>
        o.queue.offer(line)
          ? Effect.void
          : Effect.sleep(Duration.millis(pollMs)).pipe(Effect.andThen(waitForRoom(line))),
      );

    // One pass over the segments from lastOffered + 1 to the durable seq seen at its start.
    const pass = Effect.gen(function* () {
      const upTo = o.durableSeq();
      const records = readSegmentRecords(o.dir, { instance: o.instance, fromSeq: lastOffered + 1 });
      while (true) {
        const next = yield* Effect.promise(() => records.next());
        if (next.done === true) break;
        const { seq, line } = next.value;
        if (seq <= lastOffered) continue;
        if (seq > upTo || seq !== lastOffered + 1) break;
        yield* waitForRoom(lineOf(seq, line));
        lastOffered = seq;
        caughtUp++;
      }
      yield* Effect.promise(async () => {
        await records.return(undefined);
      });
    });

    const catchUp = Effect.gen(function* () {
      while (true) {
        yield* pass;
        // Synchronous with `durable`: no batch can land between this check and going live.
        if (lastOffered >= o.durableSeq()) {
          catchingUp = false;
          return;
        }
        yield* Effect.sleep(Duration.millis(pollMs));
      }
    });

    const feed: RemoteFeed = {
      name: o.queue.name,
      required: o.required,
      queue: o.queue,
      get catchingUp() {
        return catchingUp;
      },
      get caughtUp() {
        return caughtUp;
      },
      get lastOffered() {
        return lastOffered;
      },
      durable: (lines) => {
        if (catchingUp) return;
        for (const l of lines) {
          if (l.seq <= lastOffered) continue;
          if (!o.queue.offer(lineOf(l.seq, l.line))) {
            catchingUp = true;
            fork(catchUp);
            return;
          }
          lastOffered = l.seq;
        }
      },
    };
    // A sink that was behind when pgwarden last stopped starts with the records it missed.
    if (lastOffered < durableAtStart) {
      catchingUp = true;
      fork(catchUp);
    }
    return feed;
  });
