// Worker entry of the audit pipeline (its other side is AuditWorker.ts): chaining, HMACs, hashing, statement
// normalization, fsync and the sinks run here, off the proxy's event loop.
import { parentPort, workerData } from "node:worker_threads";
import type { Logger } from "pino";
import type { AuditConfig } from "./AuditConfig.ts";
import { isAuditError } from "./AuditError.ts";
import { type EventBatch, EventUnbatcher } from "./EventBatch.ts";
import { openAuditPipeline, startAudit } from "./openPipeline.ts";
import type { AuditPipeline } from "./Pipeline.ts";

const port = parentPort!;
const { config, version } = workerData as { config: AuditConfig; version: string };

const forward =
  (level: "info" | "warn" | "error") =>
  (obj: unknown, msg?: string): void =>
    port.postMessage({ t: "log", level, obj, msg });
const log = { info: forward("info"), warn: forward("warn"), error: forward("error") } as unknown as Pick<
  Logger,
  "info" | "warn" | "error"
>;

let ingested = 0;
const unbatcher = new EventUnbatcher();
const running = await startAudit(openAuditPipeline(config, log, version));
if (isAuditError(running)) {
  port.postMessage({ t: "failed", error: running });
  port.close();
} else {
  const pipeline = running.pipeline as AuditPipeline;
  const report = () => port.postMessage({ t: "status", status: pipeline.status(), ingested });
  const timer = setInterval(report, 25);
  port.on("message", (m: { t: "events"; batch: EventBatch } | { t: "close"; timeoutMs: number }) => {
    if (m.t === "events") {
      pipeline.ingest(unbatcher.events(m.batch), m.batch.times);
      ingested += m.batch.events.length;
      return;
    }
    clearInterval(timer);
    void running.stop(m.timeoutMs).then((error) => {
      report();
      port.postMessage({ t: "closed", error });
      port.close();
    });
  });
  report();
  port.postMessage({ t: "ready" });
}
