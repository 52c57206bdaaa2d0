import type { Socket } from "node:net";
import { clearArray } from "../clearArray.ts";

/**
 * Writes a batch of slices as one writev (cork/uncork) and applies backpressure: when the
 * destination's buffer is full, the source stops reading until the destination drains.
 * The batch array is emptied for reuse.
 *
 * Returns false, writing nothing, when more than `limit` bytes were already queued for `dest`:
 * with the source paused on backpressure that cannot happen to an honest pair of peers, so it
 * marks a connection that must end rather than grow.
 */
export const batchWrite = (dest: Socket, batch: Uint8Array[], source: Socket, limit = Infinity): boolean => {
  const n = batch.length;
  if (n === 0 || dest.destroyed) {
    clearArray(batch);
    return true;
  }
  if (dest.writableLength > limit) {
    clearArray(batch);
    return false;
  }
  let ok: boolean;
  if (n === 1) ok = dest.write(batch[0]!);
  else {
    dest.cork();
    ok = true;
    for (let i = 0; i < n; i++) ok = dest.write(batch[i]!);
    dest.uncork();
  }
  clearArray(batch);
  if (!ok && !source.isPaused()) {
    source.pause();
    dest.once("drain", () => source.resume());
  }
  return true;
};
