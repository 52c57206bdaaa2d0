import type { Socket } from "node:net";

/**
 * Writes a batch of slices as one writev (cork/uncork) and applies backpressure: when the
 * destination's buffer is full, the source stops reading until the destination drains.
 * The batch array is emptied for reuse.
 */
export const batchWrite = (dest: Socket, batch: Uint8Array[], source: Socket): void => {
  const n = batch.length;
  if (n === 0 || dest.destroyed) {
    batch.length = 0;
    return;
  }
  let ok: boolean;
  if (n === 1) ok = dest.write(batch[0]!);
  else {
    dest.cork();
    ok = true;
    for (let i = 0; i < n; i++) ok = dest.write(batch[i]!);
    dest.uncork();
  }
  batch.length = 0;
  if (!ok && !source.isPaused()) {
    source.pause();
    dest.once("drain", () => source.resume());
  }
};
