import { readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * The durable position of one remote sink: the seq of the last record it acknowledged, in
 * `sink-<instance>-<sink>.cursor` beside the segments (a JSON object on one line). It is written
 * after acknowledged batches — to a temporary file, fsync'd, then renamed over the old one — so
 * a restart resumes the sink's catch-up from exactly there: nothing lost, nothing resent. Saves
 * are coalesced: while one is in flight, only the newest position waits for the next.
 */
export interface SinkCursor {
  /** Seq last saved or being saved. */
  readonly seq: number | undefined;
  /** Records `seq` as acknowledged; the file follows asynchronously. */
  acked(seq: number): void;
  /** Resolves once every position recorded so far is on disk. */
  flush(): Promise<void>;
}

export const cursorFileName = (instance: string, sink: string): string =>
  `sink-${instance}-${sink.replace(/[^A-Za-z0-9._-]/g, "_")}.cursor`;

/** The saved position, or undefined for a sink without one (new, or its file unreadable). */
export const readSinkCursor = async (
  dir: string,
  instance: string,
  sink: string,
): Promise<number | undefined> => {
  try {
    const v = JSON.parse(await readFile(join(dir, cursorFileName(instance, sink)), "utf8")) as {
      instance?: unknown;
      sink?: unknown;
      seq?: unknown;
    };
    return v.instance === instance && v.sink === sink && Number.isSafeInteger(v.seq) && (v.seq as number) >= 0
      ? (v.seq as number)
      : undefined;
  } catch {
    return undefined;
  }
};

export const makeSinkCursor = (
  dir: string,
  instance: string,
  sink: string,
  initial: number | undefined,
  onError: (e: unknown) => void,
): SinkCursor => {
  const path = join(dir, cursorFileName(instance, sink));
  const tmp = `${path}.tmp`;
  let wanted = initial;
  let saved = initial;
  let saving: Promise<void> | undefined;

  const save = async (): Promise<void> => {
    while (wanted !== saved) {
      const seq = wanted!;
      await writeFile(tmp, `${JSON.stringify({ instance, sink, seq })}\n`, { mode: 0o640, flush: true });
      await rename(tmp, path);
      saved = seq;
    }
  };
  const kick = (): Promise<void> => {
    saving ??= save()
      .catch(onError)
      .finally(() => {
        saving = undefined;
        if (wanted !== saved) void kick();
      });
    return saving;
  };
  return {
    get seq() {
      return wanted;
    },
    acked: (seq) => {
      if (wanted !== undefined && seq <= wanted) return;
      wanted = seq;
      void kick();
    },
    flush: async () => {
      if (saving !== undefined) await saving;
      if (wanted !== saved) await kick();
    },
  };
};
