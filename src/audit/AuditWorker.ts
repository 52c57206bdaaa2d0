import { Worker } from "node:worker_threads";
import type { Logger } from "pino";
import type { EventSink } from "../runtime/EventSink.ts";
import type { AuditConfig } from "./AuditConfig.ts";
import { type AuditError, auditError } from "./AuditError.ts";
import { EventBatcher } from "./EventBatch.ts";
import type { AuditHandle, RunningAudit } from "./openPipeline.ts";
import type { PipelineStatus } from "./Pipeline.ts";
import { withPipelineYoungGeneration } from "./pipelineHeap.ts";
import { makeEpochMsClock } from "./timestamp.ts";

/**
 * The audit pipeline on its own thread. The proxy's emit stamps the event and appends it to
 * the current batch (synchronous, O(1)); one postMessage hands the batch over a millisecond after
 * its first event: one per event-loop tick woke the worker for a transaction or two at a time. Events
 * the worker has not taken yet are bounded by `audit.queueMax`: beyond it they are dropped and
 * counted, and under `block` statements and connections are refused. The worker reports its
 * status (and so whether to block) every 25 ms.
 */
type FromWorker =
  | { t: "ready" }
  | { t: "failed"; error: AuditError }
  | { t: "status"; status: PipelineStatus; ingested: number }
  | { t: "log"; level: "info" | "warn" | "error"; obj: unknown; msg?: string }
  | { t: "closed"; error: AuditError | undefined };

/** How long a batch collects events after its first before it is handed over. */
const HANDOFF_MS = 1;

const starting: PipelineStatus = {
  durableSeq: 0,
  queued: 0,
  dropped: 0,
  local: { healthy: true },
  sinks: [],
  blocked: undefined,
};

export const startAuditWorker = (
  config: AuditConfig,
  log: Pick<Logger, "info" | "warn" | "error">,
  version: string,
): Promise<RunningAudit | AuditError> =>
  new Promise((resolve) => {
    const worker = withPipelineYoungGeneration(
      () =>
        new Worker(new URL("./pipelineThread.ts", import.meta.url), {
          workerData: { config, version },
        }),
    );
    const clock = makeEpochMsClock();
    let status = starting;
    let ingested = 0;
    let posted = 0;
    let dropped = 0;
    let closed = false;
    const batch = new EventBatcher();
    let scheduled = false;
    let onClosed: ((e: AuditError | undefined) => void) | undefined;

    const flush = () => {
      scheduled = false;
      if (closed) return;
      const b = batch.take();
      if (b === undefined) return;
      try {
        worker.postMessage({ t: "events", batch: b });
        posted += b.events.length;
      } catch (e) {
        // Lost, counted and reported like events the full queue refused.
        batch.undelivered(b);
        dropped += b.events.length;
        log.error(
          { err: (e as Error).message, events: b.events.length },
          "audit events could not be handed to the worker",
        );
      }
    };
    const blocked = (): string | undefined => {
      if (status.blocked !== undefined) return status.blocked;
      if (config.onFailure === "block" && posted - ingested >= config.queueMax)
        return "the audit queue is full";
      return undefined;
    };
    /** False when the event is dropped: the queue towards the worker is full. */
    const room = (): boolean => {
      if (closed) return false;
      if (posted + batch.size - ingested >= config.queueMax) {
        dropped++;
        return false;
      }
      if (!scheduled) {
        scheduled = true;
        setTimeout(flush, HANDOFF_MS);
      }
      return true;
    };
    const sink: EventSink = {
      statements: true,
      emit: (e) => {
        if (room()) batch.add(e, clock());
      },
      transition: (t) => {
        if (room()) batch.addTransition(t, clock());
      },
      blocked,
    };
    const handle: AuditHandle = {
      sink,
      status: () => ({ ...status, dropped: status.dropped + dropped, blocked: blocked() }),
    };

    worker.on("message", (m: FromWorker) => {
      switch (m.t) {
        case "ready":
          resolve({
            pipeline: handle,
            stop: (timeoutMs) => {
              if (closed) return Promise.resolve(undefined);
              flush();
              closed = true;
              return new Promise((done) => {
                onClosed = done;
                worker.postMessage({ t: "close", timeoutMs });
              });
            },
          });
          return;
        case "failed":
          void worker.terminate();
          resolve(m.error);
          return;
        case "status":
          status = m.status;
          ingested = m.ingested;
          return;
        case "log":
          log[m.level](m.obj as object, m.msg);
          return;
        case "closed":
          void worker.terminate();
          onClosed?.(
            m.error ??
              (dropped > 0 ? auditError("PGW_AUDIT_IO", `${dropped} audit events were dropped`) : undefined),
          );
      }
    });
    worker.on("error", (e) => {
      log.error({ err: e.message }, "audit worker failed");
      resolve(auditError("PGW_AUDIT_IO", `audit worker failed: ${e.message}`));
      onClosed?.(auditError("PGW_AUDIT_IO", `audit worker failed: ${e.message}`));
    });
  });
