import { Effect, Exit, Scope } from "effect";
import type { AuditSink } from "../../../src/adapters/audit/AuditSink.ts";
import {
  makeSinkQueue,
  type SinkQueue,
  type SinkQueueEvent,
  type SinkQueueSettings,
} from "../../../src/adapters/audit/SinkQueue.ts";

/** A SinkQueue on the real clock, for tests and the benchmark that drive it from promises. */
export const startQueue = async (
  sink: AuditSink,
  settings: SinkQueueSettings,
  onEvent?: (e: SinkQueueEvent) => void,
): Promise<{ readonly queue: SinkQueue; shutdown(timeoutMs: number): Promise<boolean> }> => {
  const scope = await Effect.runPromise(Scope.make());
  const queue = await Effect.runPromise(
    makeSinkQueue(sink, settings, onEvent === undefined ? {} : { onEvent }).pipe(Scope.provide(scope)),
  );
  return {
    queue,
    shutdown: async (timeoutMs) => {
      const drained = await Effect.runPromise(queue.shutdown(timeoutMs));
      await Effect.runPromise(Scope.close(scope, Exit.void));
      return drained;
    },
  };
};

/** Polls `check` every 25 ms until it holds; fails with `what` after `timeoutMs`. */
export const eventually = async (
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 15_000,
) => {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
};
