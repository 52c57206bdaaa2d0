import { Clock, Duration, Effect, Fiber, Latch, Schedule, type Scope } from "effect";
import {
  type AuditLine,
  type AuditSink,
  describeSinkError,
  type SinkCounters,
  SinkError,
  toSinkError,
} from "./AuditSink.ts";

/**
 * One bounded queue in front of one sink. `offer` never waits: it answers false when the queue is
 * full so the pipeline can apply its failure policy. A single worker fiber sends batches in order
 * and retries a failed batch forever with capped, jittered exponential backoff; a line leaves the
 * queue only once the sink acknowledged it, so `queued` counts the batch in flight too.
 */

export interface SinkQueueSettings {
  /** Lines held at most, the batch in flight included. */
  readonly maxQueued: number;
  /** Lines per delivery at most. */
  readonly batchMax: number;
  /** How long the oldest queued line may wait for a batch to fill. */
  readonly batchMs: number;
  /** First retry delay. */
  readonly backoffMinMs: number;
  /** Retry delays never exceed this, jitter included. */
  readonly backoffMaxMs: number;
  /** One delivery attempt fails after this long, whatever the sink does: a hung sink cannot stall the queue. */
  readonly attemptTimeoutMs: number;
}

export type SinkQueueEvent =
  | { readonly _tag: "SinkDown"; readonly sink: string; readonly error: string; readonly at: number }
  | { readonly _tag: "SinkUp"; readonly sink: string; readonly downForMs: number; readonly at: number };

export interface SinkQueueStatus extends SinkCounters {
  readonly healthy: boolean;
  /** Offers refused because the queue was full or shutting down. */
  readonly rejected: number;
  /** Highest `seq` the sink acknowledged, the resume point for a catch-up. */
  readonly lastAckedSeq: number | undefined;
}

export interface SinkQueue {
  readonly name: string;
  /** False once a delivery failed, true again after the next success. */
  readonly healthy: boolean;
  /** Queues a line; false when full or shutting down (the line was not taken). */
  offer(line: AuditLine): boolean;
  counters(): SinkCounters;
  status(): SinkQueueStatus;
  /** Refuses new lines, waits up to `timeoutMs` for the queue to empty, stops the worker and closes the sink; true when everything was acknowledged. */
  shutdown(timeoutMs: number): Effect.Effect<boolean>;
}

export interface SinkQueueOptions {
  /** Told of every down/up transition, synchronously; a throwing callback is ignored so it cannot stop delivery. */
  readonly onEvent?: (event: SinkQueueEvent) => void;
  /** Told the seq of the last line of each acknowledged batch, synchronously (a sink's cursor). */
  readonly onAcked?: (seq: number) => void;
}

/** Exponential from `min`, doubling, clamped to `max`, jittered ±20% and clamped again so it never exceeds `max`. */
export const backoffSchedule = (
  minMs: number,
  maxMs: number,
): Schedule.Schedule<Duration.Duration, unknown> => {
  const clamp = ({ duration }: { readonly duration: Duration.Duration }) =>
    Effect.succeed(Duration.min(duration, Duration.millis(maxMs)));
  return Schedule.exponential(Duration.millis(minMs), 2).pipe(
    Schedule.modifyDelay(clamp),
    Schedule.jittered,
    Schedule.modifyDelay(clamp),
  );
};

/** FIFO of lines with their arrival times; drops a prefix once acknowledged without shifting every time. */
class LineBuffer {
  private lines: AuditLine[] = [];
  private arrivals: number[] = [];
  private head = 0;

  get size(): number {
    return this.lines.length - this.head;
  }
  push(line: AuditLine, at: number): void {
    this.lines.push(line);
    this.arrivals.push(at);
  }
  oldestArrival(): number | undefined {
    return this.arrivals[this.head];
  }
  peek(n: number): readonly AuditLine[] {
    return this.lines.slice(this.head, this.head + n);
  }
  drop(n: number): void {
    this.head += n;
    if (this.head > 1024 && this.head * 2 > this.lines.length) {
      this.lines = this.lines.slice(this.head);
      this.arrivals = this.arrivals.slice(this.head);
      this.head = 0;
    }
  }
}

export const makeSinkQueue = (
  sink: AuditSink,
  settings: SinkQueueSettings,
  options: SinkQueueOptions = {},
): Effect.Effect<SinkQueue, never, Scope.Scope> =>
  Effect.gen(function* () {
    const clock = yield* Clock.Clock;
    const buffer = new LineBuffer();
    const hasWork = yield* Latch.make(false);
    const batchFull = yield* Latch.make(false);
    const idle = yield* Latch.make(true);
    const counts = { sent: 0, failed: 0, retried: 0, rejected: 0 };
    let lastError: string | undefined;
    let lastAckedSeq: number | undefined;
    let healthy = true;
    let downSince = 0;
    let closing = false;

    const emit = (event: SinkQueueEvent) => {
      try {
        options.onEvent?.(event);
      } catch {
        // a broken listener must not stop delivery
      }
    };

    const markFailed = (e: SinkError) =>
      Effect.sync(() => {
        counts.failed++;
        lastError = describeSinkError(e);
        if (healthy) {
          healthy = false;
          downSince = clock.currentTimeMillisUnsafe();
          emit({ _tag: "SinkDown", sink: sink.name, error: lastError, at: downSince });
        }
      });

    const markDelivered = (batch: readonly AuditLine[]) =>
      Effect.sync(() => {
        buffer.drop(batch.length);
        counts.sent += batch.length;
        lastAckedSeq = batch[batch.length - 1]?.seq ?? lastAckedSeq;
        if (lastAckedSeq !== undefined)
          try {
            options.onAcked?.(lastAckedSeq);
          } catch {
            // A cursor that cannot be saved must not stop delivery; the next ack saves it again.
          }
        if (!healthy) {
          healthy = true;
          const at = clock.currentTimeMillisUnsafe();
          emit({ _tag: "SinkUp", sink: sink.name, downForMs: at - downSince, at });
        }
        if (buffer.size === 0) {
          hasWork.closeUnsafe();
          idle.openUnsafe();
        }
        if (buffer.size < settings.batchMax) batchFull.closeUnsafe();
      });

    // Lets a partial batch wait for company, but never longer than batchMs after its oldest line arrived.
    const awaitBatch = Effect.suspend(() => {
      const oldest = buffer.oldestArrival();
      if (closing || oldest === undefined || buffer.size >= settings.batchMax) return Effect.void;
      const wait = oldest + settings.batchMs - clock.currentTimeMillisUnsafe();
      return wait <= 0 ? Effect.void : Effect.raceFirst(batchFull.await, Effect.sleep(Duration.millis(wait)));
    });

    const deliverWithRetry = (batch: readonly AuditLine[]) => {
      let attempts = 0;
      const attempt = Effect.suspend(() => {
        if (attempts++ > 0) counts.retried++;
        return Effect.tryPromise({
          try: () => sink.deliver(batch),
          catch: (cause) => toSinkError(sink.name, "PGW_AUDIT_SINK_WRITE", cause),
        }).pipe(
          Effect.timeoutOrElse({
            duration: Duration.millis(settings.attemptTimeoutMs),
            orElse: () =>
              Effect.fail(
                new SinkError({
                  code: "PGW_AUDIT_SINK_TIMEOUT",
                  sink: sink.name,
                  message: `delivery not acknowledged within ${settings.attemptTimeoutMs} ms`,
                }),
              ),
          }),
        );
      }).pipe(Effect.tapError(markFailed));
      return Effect.retry(attempt, backoffSchedule(settings.backoffMinMs, settings.backoffMaxMs));
    };

    const worker = Effect.forever(
      Effect.gen(function* () {
        yield* hasWork.await;
        yield* awaitBatch;
        const batch = buffer.peek(settings.batchMax);
        if (batch.length === 0) return;
        yield* deliverWithRetry(batch);
        yield* markDelivered(batch);
      }),
    );
    const fiber = yield* Effect.forkScoped(worker);

    const status = (): SinkQueueStatus => ({
      ...counts,
      queued: buffer.size,
      healthy,
      lastAckedSeq,
      ...(lastError === undefined ? {} : { lastError }),
    });

    const queue: SinkQueue = {
      name: sink.name,
      get healthy() {
        return healthy;
      },
      offer: (line) => {
        if (closing || buffer.size >= settings.maxQueued) {
          counts.rejected++;
          return false;
        }
        buffer.push(line, clock.currentTimeMillisUnsafe());
        idle.closeUnsafe();
        hasWork.openUnsafe();
        if (buffer.size >= settings.batchMax) batchFull.openUnsafe();
        return true;
      },
      counters: () => {
        const { sent, failed, retried, queued, lastError } = status();
        return lastError === undefined
          ? { sent, failed, retried, queued }
          : { sent, failed, retried, queued, lastError };
      },
      status,
      shutdown: (timeoutMs) =>
        Effect.gen(function* () {
          closing = true;
          batchFull.openUnsafe();
          const drained = yield* Effect.timeoutOption(idle.await, Duration.millis(timeoutMs));
          yield* Fiber.interrupt(fiber);
          yield* Effect.promise(() => sink.close().catch(() => undefined));
          return drained._tag === "Some";
        }),
    };
    return queue;
  });
