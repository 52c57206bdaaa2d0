import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * Segment file naming and reading. A segment file is `audit-<instance>-<segment>.jsonl`, the
 * segment number zero-padded to 8 digits so directory listings sort in chain order.
 */

const NAME = /^audit-([A-Za-z0-9][A-Za-z0-9._-]{0,63})-(\d{8,})\.jsonl$/;

export const segmentFileName = (instance: string, segment: number): string =>
  `audit-${instance}-${String(segment).padStart(8, "0")}.jsonl`;

export interface SegmentFile {
  readonly instance: string;
  readonly segment: number;
  readonly path: string;
  readonly name: string;
}

/** Segment files of `dir` by instance, each list in segment order. */
export const listSegments = async (dir: string): Promise<Map<string, SegmentFile[]>> => {
  const byInstance = new Map<string, SegmentFile[]>();
  for (const name of await readdir(dir)) {
    const m = NAME.exec(name);
    if (m === null) continue;
    const instance = m[1]!;
    const list = byInstance.get(instance) ?? [];
    list.push({ instance, segment: Number(m[2]), path: join(dir, name), name });
    byInstance.set(instance, list);
  }
  for (const list of byInstance.values()) list.sort((a, b) => a.segment - b.segment);
  return byInstance;
};

export interface SegmentLines {
  /** Complete lines, newline removed. */
  readonly lines: string[];
  /** Bytes after the last newline: a write torn by a crash, or tampering. */
  readonly tornBytes: number;
}

/**
 * A segment's complete lines and its torn tail, counted in the file's own bytes: a crash can cut a
 * line inside a character, and the decoded text's replacement characters are not the bytes the
 * recovery must cut off.
 */
export const readSegmentLines = async (path: string): Promise<SegmentLines> => {
  const bytes = await readFile(path);
  const end = bytes.lastIndexOf(10) + 1;
  const lines = bytes.toString("utf8", 0, end).split("\n");
  lines.pop();
  return { lines, tornBytes: bytes.length - end };
};
