import * as Duration from "effect/Duration";
import * as Effect from "effect/Effect";
import * as Fiber from "effect/Fiber";
import * as Latch from "effect/Latch";
import type * as Scope from "effect/Scope";
import type { Logger } from "pino";
import type { AuditSink } from "../adapters/audit/AuditSink.ts";
import { makeSinkQueue, type SinkQueueEvent, type SinkQueueSettings } from "../adapters/audit/SinkQueue.ts";
import type { EventSink, ProxyEvent } from "../runtime/EventSink.ts";
import type { SqlParser } from "../sql/parser.ts";
import { type AuditError, auditError, isAuditError } from "./AuditError.ts";
import type { AuditEvent } from "./AuditEvent.ts";
import type { ChainedLine } from "./Chain.ts";
import type { StatementTextMode } from "./eventOf.ts";
import { RecordBuilder } from "./RecordBuilder.ts";
import { makeRemoteFeed, type RemoteFeed } from "./RemoteFeed.ts";
import { SegmentWriter, type SegmentWriterOptions } from "./SegmentWriter.ts";
import { makeSinkCursor, readSinkCursor, type SinkCursor } from "./SinkCursor.ts";
import { formatEpochMs, makeEpochMsClock } from "./timestamp.ts";

/**
 * The audit pipeline: ProxyEvents → one bounded queue (emit is synchronous, O(1), never waits) →
 * one fiber that stamps, chains, HMACs and appends them to the local segments, one fdatasync per
 * batch (group commit: what arrives during an fsync is the next batch) → each fsync'd batch to
 * every remote sink's own bounded queue, which delivers in order with retry and backoff; a sink
 * that fell behind is caught up from the segments (RemoteFeed). The data path only enqueues.
 */

export interface RemoteSinkSpec {
  readonly sink: AuditSink;
  /** `audit.onFailure` applies when this sink cannot take records. */
  readonly required: boolean;
  readonly queue: SinkQueueSettings;
}

/** The segments' own settings, as the writer takes them, plus the pipeline's. */
export interface AuditPipelineOptions
  extends Pick<
    SegmentWriterOptions,
    | "dir"
    | "instance"
    | "boot"
    | "hmacKey"
    | "previousHmacKeys"
    | "signer"
    | "segmentMaxBytes"
    | "segmentMaxAgeMs"
    | "fsyncBatchMs"
  > {
  readonly onFailure: "block" | "alert";
  readonly statements: StatementTextMode;
  /** Events held before emit starts dropping (and, under block, refusing). */
  readonly queueMax: number;
  readonly sinks: readonly RemoteSinkSpec[];
  readonly log: Pick<Logger, "info" | "warn" | "error">;
  /** Needed for `normalized` and `fingerprint`. */
  readonly parser?: SqlParser;
  /** pgwarden's version, for `audit.started`. */
  readonly version: string;
  /** How often a failed local store is reopened. */
  readonly reopenMs?: number;
  /** Fold transitions into statement records (default true; see RecordBuilder). */
  readonly foldTransitions?: boolean;
}

export interface SinkStatus {
  readonly name: string;
  readonly required: boolean;
  readonly healthy: boolean;
  readonly catchingUp: boolean;
  readonly caughtUp: number;
  readonly sent: number;
  readonly failed: number;
  readonly retried: number;
  readonly queued: number;
  readonly lastAckedSeq: number | undefined;
  readonly lastError?: string;
}

export interface PipelineStatus {
  /** Seq of the last record on disk. */
  readonly durableSeq: number;
  /** Events waiting for the chaining fiber. */
  readonly queued: number;
  /** Events emit had to drop because the queue was full. */
  readonly dropped: number;
  readonly local: { readonly healthy: boolean; readonly error?: string };
  readonly sinks: readonly SinkStatus[];
  /** Why statements and connections are refused now (block), if they are. */
  readonly blocked: string | undefined;
}

export interface AuditPipeline {
  /** What the proxy emits into (the `Events` service). */
  readonly sink: EventSink;
  /** Events stamped elsewhere (another thread's emit), with their times in epoch milliseconds. */
  ingest(events: readonly ProxyEvent[], times: ArrayLike<number>): void;
  status(): PipelineStatus;
  /**
   * Drains the queue into the segments, seals the open segment (reason shutdown), lets every
   * remote sink finish (catch-up included) within `timeoutMs`, and stops. Resolves with the
   * local store's error, if any; undrained sinks are reported in the log.
   */
  close(timeoutMs: number): Effect.Effect<AuditError | undefined>;
}

/** Items of the queue: what the proxy emitted, or what the pipeline itself records. */
type Item = ProxyEvent | { readonly kind: "audit"; readonly event: Omit<AuditEvent, "ts"> };

/** A fixed-size FIFO: push and shift are O(1) and allocate nothing. */
class Ring {
  readonly #items: (Item | undefined)[];
  readonly #times: Float64Array;
  #head = 0;
  size = 0;
  readonly capacity: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.#items = new Array<Item | undefined>(capacity);
    this.#times = new Float64Array(capacity);
  }

  push(item: Item, at: number): boolean {
    if (this.size === this.capacity) return false;
    const i = (this.#head + this.size) % this.capacity;
    this.#items[i] = item;
    this.#times[i] = at;
    this.size++;
    return true;
  }

  /** Takes the oldest item; `at` gets its time. */
  shift(at: { t: number }): Item {
    const i = this.#head;
    const item = this.#items[i]!;
    this.#items[i] = undefined;
    at.t = this.#times[i]!;
    this.#head = (i + 1) % this.capacity;
    this.size--;
    return item;
  }
}

const describe = (e: AuditError) => `${e.code}: ${e.message}`;

export const makeAuditPipeline = (
  o: AuditPipelineOptions,
): Effect.Effect<AuditPipeline, AuditError, Scope.Scope> =>
  Effect.gen(function* () {
    const log = o.log;
    const clock = makeEpochMsClock();
    const ring = new Ring(o.queueMax);
    const hasWork = yield* Latch.make(false);
    /** Opened by close: a commit waiting out its window goes at once. */
    const closeCalled = yield* Latch.make(false);
    const builder = new RecordBuilder({
      statements: o.statements,
      parser: o.parser,
      ...(o.foldTransitions === undefined ? {} : { fold: o.foldTransitions }),
    });
    const feeds: RemoteFeed[] = [];
    let dropped = 0;
    let lost = 0;
    let localError: AuditError | undefined;
    let localDownSince = 0;
    let closing = false;
    let busy = false;

    const push = (item: Item, at = clock()): void => {
      if (ring.push(item, at)) hasWork.openUnsafe();
      else dropped++;
    };
    const record = (event: Omit<AuditEvent, "ts">) => push({ kind: "audit", event });

    const onDurable = (lines: readonly ChainedLine[]) => {
      for (const f of feeds) f.durable(lines);
    };
    const writerOptions = {
      dir: o.dir,
      instance: o.instance,
      boot: o.boot,
      hmacKey: o.hmacKey,
      ...(o.previousHmacKeys === undefined ? {} : { previousHmacKeys: o.previousHmacKeys }),
      signer: o.signer,
      segmentMaxBytes: o.segmentMaxBytes,
      segmentMaxAgeMs: o.segmentMaxAgeMs,
      fsyncBatchMs: o.fsyncBatchMs,
      // The ring bounds what waits; the writer only ever holds one batch.
      maxQueuedEvents: o.queueMax + 1024,
      onDurable,
    };
    const opened = yield* Effect.promise(() => SegmentWriter.open(writerOptions));
    if (isAuditError(opened)) return yield* Effect.fail(opened);
    let writer: SegmentWriter = opened;

    const onSinkEvent = (required: boolean) => (e: SinkQueueEvent) => {
      if (e._tag === "SinkDown") {
        log.warn({ sink: e.sink, required, error: e.error }, "audit sink down");
        const f = feeds.find((x) => x.name === e.sink);
        record({
          kind: "sink.failure",
          sink: e.sink,
          code: e.error.split(":")[0] ?? "PGW_AUDIT_SINK_WRITE",
          message: e.error,
          ...(f === undefined ? {} : { pending: f.queue.status().queued }),
        } as Omit<AuditEvent, "ts">);
      } else {
        const f = feeds.find((x) => x.name === e.sink);
        log.info({ sink: e.sink, downForMs: e.downForMs }, "audit sink recovered");
        record({
          kind: "sink.recovery",
          sink: e.sink,
          downMs: e.downForMs,
          caughtUp: f?.caughtUp ?? 0,
        } as Omit<AuditEvent, "ts">);
      }
    };
    const cursors: SinkCursor[] = [];
    for (const spec of o.sinks) {
      const name = spec.sink.name;
      const saved = yield* Effect.promise(() => readSinkCursor(o.dir, o.instance, name));
      // A sink without a cursor (new) starts from what is durable now; the cursor says so at once.
      const cursor = makeSinkCursor(o.dir, o.instance, name, saved, (e) =>
        log.warn({ sink: name, error: String((e as Error).message) }, "audit sink cursor not saved"),
      );
      if (saved === undefined) cursor.acked(writer.durableSeq);
      cursors.push(cursor);
      const queue = yield* makeSinkQueue(spec.sink, spec.queue, {
        onEvent: onSinkEvent(spec.required),
        onAcked: cursor.acked,
      });
      feeds.push(
        yield* makeRemoteFeed({
          queue,
          required: spec.required,
          dir: o.dir,
          instance: o.instance,
          durableSeq: () => writer.durableSeq,
          resumeAfter: saved ?? writer.durableSeq,
        }),
      );
    }

    const blocked = (): string | undefined => {
      if (o.onFailure !== "block") return undefined;
      if (localError !== undefined) return `the local audit segments cannot be written (${localError.code})`;
      if (ring.size >= ring.capacity) return "the audit queue is full";
      for (const f of feeds)
        if (f.required && !f.queue.healthy) return `the required audit sink ${f.name} is down`;
      return undefined;
    };

    const at = { t: 0 };
    const built: AuditEvent[] = [];
    const append = (ev: AuditEvent) => {
      if (writer.append(ev)) return 1;
      lost++;
      return 0;
    };
    /** Moves everything queued into the writer, then makes it durable. */
    const drainOnce = Effect.gen(function* () {
      busy = true;
      hasWork.closeUnsafe();
      let n = 0;
      while (ring.size > 0) {
        const item = ring.shift(at);
        if (item.kind === "audit") {
          n += append({ ...item.event, ts: formatEpochMs(at.t) } as AuditEvent);
          continue;
        }
        builder.add(item, at.t, built);
        for (const ev of built) n += append(ev);
        built.length = 0;
      }
      // Transitions no statement took within the hold time, or all of them when closing.
      builder.flushHeld(built, closing ? Number.POSITIVE_INFINITY : clock());
      for (const ev of built) n += append(ev);
      built.length = 0;
      const err = n === 0 ? undefined : yield* Effect.promise(() => writer.flush());
      busy = false;
      if (err !== undefined) {
        localError = err;
        localDownSince = Date.now();
        lost += n;
        log.error({ error: describe(err) }, "audit segments failed; reopening");
      }
    });

    const reopen = Effect.gen(function* () {
      yield* Effect.sleep(Duration.millis(o.reopenMs ?? 1000));
      void writer.close();
      const w = yield* Effect.promise(() => SegmentWriter.open(writerOptions));
      if (isAuditError(w)) {
        log.error({ error: describe(w) }, "audit segments still cannot be written");
        return;
      }
      writer = w;
      const failed = localError!;
      localError = undefined;
      log.info({ lost }, "audit segments writable again");
      record({
        kind: "sink.failure",
        sink: "local",
        code: failed.code,
        message: failed.message,
        pending: lost,
      } as Omit<AuditEvent, "ts">);
      record({
        kind: "sink.recovery",
        sink: "local",
        downMs: Date.now() - localDownSince,
        caughtUp: 0,
      } as Omit<AuditEvent, "ts">);
      lost = 0;
    });

    // Group commit: under load one write and fdatasync per `fsyncBatchMs` at most, so their cost
    // (and this loop's) is shared by every record that arrived in the window; after a quiet spell
    // the first event is written at once. Monotonic time: a wall-clock step must not stall it.
    let lastDrain = Number.NEGATIVE_INFINITY;
    const pace = Effect.suspend(() => {
      const wait = lastDrain + o.fsyncBatchMs - performance.now();
      return wait > 0 && !closing
        ? Effect.race(Effect.sleep(Duration.millis(wait)), closeCalled.await)
        : Effect.void;
    });
    const worker = yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function* () {
          if (localError !== undefined) return yield* reopen;
          yield* hasWork.await;
          yield* pace;
          lastDrain = performance.now();
          yield* drainOnce;
        }),
      ),
    );

    // Held transitions are written within about the hold time even when nothing else arrives.
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.sleep(Duration.millis(100)).pipe(
          Effect.andThen(
            Effect.sync(() => {
              if (builder.holding > 0) hasWork.openUnsafe();
            }),
          ),
        ),
      ),
    );

    record({ kind: "audit.started", version: o.version, pid: process.pid } as Omit<AuditEvent, "ts">);

    const sink: EventSink = {
      statements: true,
      emit: (e) => {
        if (!closing) push(e);
      },
      blocked,
    };

    const status = (): PipelineStatus => ({
      durableSeq: writer.durableSeq,
      queued: ring.size,
      dropped,
      local: localError === undefined ? { healthy: true } : { healthy: false, error: describe(localError) },
      sinks: feeds.map((f) => {
        const s = f.queue.status();
        return {
          name: f.name,
          required: f.required,
          healthy: s.healthy,
          catchingUp: f.catchingUp,
          caughtUp: f.caughtUp,
          sent: s.sent,
          failed: s.failed,
          retried: s.retried,
          queued: s.queued,
          lastAckedSeq: s.lastAckedSeq,
          ...(s.lastError === undefined ? {} : { lastError: s.lastError }),
        };
      }),
      blocked: blocked(),
    });

    const settled = (deadline: number, done: () => boolean): Effect.Effect<boolean> =>
      Effect.suspend(() =>
        done()
          ? Effect.succeed(true)
          : Date.now() >= deadline
            ? Effect.succeed(false)
            : Effect.sleep(Duration.millis(5)).pipe(Effect.andThen(settled(deadline, done))),
      );

    const close = (timeoutMs: number): Effect.Effect<AuditError | undefined> =>
      Effect.gen(function* () {
        const deadline = Date.now() + timeoutMs;
        closing = true;
        closeCalled.openUnsafe();
        hasWork.openUnsafe();
        yield* settled(
          deadline,
          () => (ring.size === 0 && !busy && builder.holding === 0) || localError !== undefined,
        );
        yield* Fiber.interrupt(worker);
        // What the deadline left queued was never written: counted, so that stop() says so.
        const unwritten = ring.size;
        if (unwritten > 0) log.error({ unwritten }, "audit events not written before the shutdown deadline");
        const err = yield* Effect.promise(() => writer.close());
        if (err !== undefined) log.error({ error: describe(err) }, "audit segments not sealed");
        yield* settled(deadline, () => feeds.every((f) => !f.catchingUp));
        for (const f of feeds) {
          const left = Math.max(0, deadline - Date.now());
          const drained = yield* f.queue.shutdown(left);
          if (!drained)
            log.warn(
              { sink: f.name, queued: f.queue.status().queued, lastAckedSeq: f.queue.status().lastAckedSeq },
              "audit sink not drained at shutdown; the local segments hold the rest",
            );
        }
        yield* Effect.promise(() => Promise.all(cursors.map((c) => c.flush())));
        if (dropped > 0) log.error({ dropped }, "audit events dropped: the queue was full");
        return (
          err ??
          (dropped > 0
            ? auditError("PGW_AUDIT_IO", `${dropped} audit events were dropped`)
            : unwritten > 0
              ? auditError(
                  "PGW_AUDIT_IO",
                  `${unwritten} audit events were not written before the shutdown deadline`,
                )
              : undefined)
        );
      });

    const ingest = (events: readonly ProxyEvent[], times: ArrayLike<number>) => {
      if (closing) return;
      for (let i = 0; i < events.length; i++) push(events[i]!, times[i]!);
    };

    return { sink, ingest, status, close } satisfies AuditPipeline;
  });
