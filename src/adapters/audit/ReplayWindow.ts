export interface Unconfirmed {
  readonly data: Buffer;
  /** Records in `data`. */
  readonly lines: number;
}

/**
 * What a sink wrote recently on one connection and cannot know arrived: a stream transport only
 * says bytes reached the kernel. When the connection breaks, the entries written within `spanMs`
 * before the break are handed back for resending, turning a silent loss into a duplicate the
 * collector drops by record id. Bounded by time and by line count.
 */
export class ReplayWindow {
  private entries: (Unconfirmed & { readonly at: number })[] = [];
  private lines = 0;

  private readonly spanMs: number;
  private readonly maxLines: number;

  constructor(spanMs: number, maxLines: number) {
    this.spanMs = spanMs;
    this.maxLines = maxLines;
  }

  /** Notes `data` (holding `lines` records) as written at `at`. */
  record(data: Buffer, lines: number, at: number): void {
    if (this.spanMs <= 0 || this.maxLines <= 0) return;
    this.entries.push({ at, data, lines });
    this.lines += lines;
    this.trim(at);
  }

  /** Empties the window, returning what was written within `spanMs` before `brokenAt`, oldest first. */
  takeUnconfirmed(brokenAt: number): Unconfirmed[] {
    this.trim(brokenAt);
    const out = this.entries.map(({ data, lines }) => ({ data, lines }));
    this.entries = [];
    this.lines = 0;
    return out;
  }

  private trim(now: number): void {
    let drop = 0;
    let lines = this.lines;
    for (const e of this.entries) {
      if (e.at >= now - this.spanMs && lines <= this.maxLines) break;
      lines -= e.lines;
      drop++;
    }
    if (drop > 0) {
      this.entries = this.entries.slice(drop);
      this.lines = lines;
    }
  }
}
