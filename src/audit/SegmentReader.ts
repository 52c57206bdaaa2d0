import { listSegments, readSegmentLines } from "./segmentFiles.ts";

/**
 * Reads the records of a segment directory in chain order (sink catch-up, `audit show`).
 * It does not verify: run `verifyDirectory` for that. A torn last line is not yielded.
 */
export interface StoredLine {
  readonly instance: string;
  readonly segment: number;
  readonly file: string;
  /** 1-based line number in the file. */
  readonly lineNo: number;
  readonly seq: number;
  readonly line: string;
  readonly record: Readonly<Record<string, unknown>>;
}

export interface ReadOptions {
  /** Only this instance (default: all, one after another in name order). */
  readonly instance?: string;
  /** Skip records before this seq; whole segments whose checkpoint ends before it are not parsed. */
  readonly fromSeq?: number;
}

export async function* readSegmentRecords(
  dir: string,
  options: ReadOptions = {},
): AsyncGenerator<StoredLine> {
  const byInstance = await listSegments(dir);
  const names = [...byInstance.keys()]
    .filter((i) => options.instance === undefined || i === options.instance)
    .sort();
  const from = options.fromSeq ?? 0;
  for (const instance of names) {
    for (const f of byInstance.get(instance)!) {
      const { lines } = await readSegmentLines(f.path);
      const lastSeq = lines.length === 0 ? undefined : seqOf(lines.at(-1)!);
      if (lastSeq !== undefined && lastSeq < from) continue;
      for (let i = 0; i < lines.length; i++) {
        let record: Record<string, unknown>;
        try {
          record = JSON.parse(lines[i]!) as Record<string, unknown>;
        } catch {
          continue;
        }
        const seq = typeof record.seq === "number" ? record.seq : -1;
        if (seq < from) continue;
        yield { instance, segment: f.segment, file: f.name, lineNo: i + 1, seq, line: lines[i]!, record };
      }
    }
  }
}

const seqOf = (line: string): number | undefined => {
  try {
    const s = (JSON.parse(line) as { seq?: unknown }).seq;
    return typeof s === "number" ? s : undefined;
  } catch {
    return undefined;
  }
};
