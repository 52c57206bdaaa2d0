import { setFlagsFromString } from "node:v8";
import type { Worker } from "node:worker_threads";

/**
 * The audit pipeline thread's young generation. pgwarden ships with `--max-semi-space-size=1`
 * (bin/pgwarden.js): the proxy's thread allocates little per message. The pipeline's thread
 * allocates several KiB per record (its event, text and line), so with 1 MiB it scavenged every
 * 15 ms under pgbench and promoted the records waiting for their fsync. V8 reads the flag for
 * each isolate it creates, and a Worker's `resourceLimits` do not override it, so the flag is
 * raised while the worker's isolate is made and put back once the worker runs. (It has to wait
 * for 'online': the isolate is made on the worker's own thread. Any other isolate made meanwhile
 * would get the larger semi-space too; the proxy starts no other thread then.)
 */
export const PIPELINE_SEMI_SPACE_MB = 16;

/** The `--max-semi-space-size` this process runs with (NODE_OPTIONS, then its command line: the last wins). */
export const semiSpaceFlag = (
  execArgv: readonly string[],
  nodeOptions: string | undefined,
): number | undefined => {
  let mb: number | undefined;
  for (const a of [...(nodeOptions?.split(/\s+/) ?? []), ...execArgv]) {
    const m = /^--max[-_]semi[-_]space[-_]size=(\d+)$/.exec(a);
    if (m !== null) mb = Number(m[1]);
  }
  return mb;
};

/** `spawn()`'s worker, made with the pipeline's young generation when this process caps it lower. */
export const withPipelineYoungGeneration = (spawn: () => Worker): Worker => {
  const own = semiSpaceFlag(process.execArgv, process.env.NODE_OPTIONS);
  if (own === undefined || own >= PIPELINE_SEMI_SPACE_MB) return spawn();
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    setFlagsFromString(`--max-semi-space-size=${own}`);
  };
  setFlagsFromString(`--max-semi-space-size=${PIPELINE_SEMI_SPACE_MB}`);
  let worker: Worker;
  try {
    worker = spawn();
  } catch (e) {
    restore();
    throw e;
  }
  worker.once("online", restore);
  worker.once("error", restore);
  worker.once("exit", restore);
  return worker;
};
