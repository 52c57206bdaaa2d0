/**
 * Audit time stamps (AU-8): RFC 3339, UTC, exactly six fractional digits, e.g.
 * `2025-03-04T05:06:07.123456Z`. Wall-clock time anchored once and advanced by the monotonic
 * clock, so stamps have microsecond resolution and do not jump with small clock slews.
 */

const pad = (n: number, width: number): string => String(n).padStart(width, "0");

/** Formats microseconds since the Unix epoch. */
export const formatMicros = (epochMicros: bigint): string => {
  const ms = epochMicros / 1000n;
  const micros = Number(((epochMicros % 1_000_000n) + 1_000_000n) % 1_000_000n);
  const d = new Date(Number(ms));
  const year = d.getUTCFullYear();
  if (year < 0 || year > 9999) throw new RangeError(`year ${year} is outside RFC 3339`);
  return (
    `${pad(year, 4)}-${pad(d.getUTCMonth() + 1, 2)}-${pad(d.getUTCDate(), 2)}` +
    `T${pad(d.getUTCHours(), 2)}:${pad(d.getUTCMinutes(), 2)}:${pad(d.getUTCSeconds(), 2)}` +
    `.${pad(micros, 6)}Z`
  );
};

/** What the schema accepts: the format above and nothing looser. */
export const TIMESTAMP_PATTERN =
  /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{6}Z$/;

export interface MicrosClock {
  /** Microseconds since the Unix epoch. */
  readonly nowMicros: () => bigint;
  /** The RFC 3339 stamp of now. */
  readonly now: () => string;
}

/** Beyond this disagreement with Date.now() the wall clock was stepped: follow it. */
const REANCHOR_MICROS = 10_000n;

export const makeMicrosClock = (
  wallMs: () => number = Date.now,
  monoNs: () => bigint = process.hrtime.bigint,
): MicrosClock => {
  let anchorWall = BigInt(wallMs()) * 1000n;
  let anchorMono = monoNs();
  const nowMicros = (): bigint => {
    const derived = anchorWall + (monoNs() - anchorMono) / 1000n;
    const wall = BigInt(wallMs()) * 1000n;
    const drift = derived - wall;
    // Date.now() has millisecond resolution, so up to 1 ms of difference is expected.
    if (drift > REANCHOR_MICROS || drift < -REANCHOR_MICROS) {
      anchorWall = wall;
      anchorMono = monoNs();
      return wall;
    }
    return derived;
  };
  return { nowMicros, now: () => formatMicros(nowMicros()) };
};

/** The process-wide clock audit events are stamped with. */
export const auditClock: MicrosClock = makeMicrosClock();

/**
 * Epoch milliseconds with a fraction (sub-microsecond precision in a double), cheap enough to
 * stamp every event at emit: no allocation. Anchored like makeMicrosClock and re-anchored on a step.
 */
export const makeEpochMsClock = (
  wallMs: () => number = Date.now,
  monoMs: () => number = () => performance.now(),
): (() => number) => {
  let anchorWall = wallMs();
  let anchorMono = monoMs();
  return () => {
    const mono = monoMs();
    const derived = anchorWall + (mono - anchorMono);
    const wall = wallMs();
    if (derived - wall > 10 || wall - derived > 10) {
      anchorWall = wall;
      anchorMono = mono;
      return wall;
    }
    return derived;
  };
};

let cachedSecond = Number.NaN;
let cachedPrefix = "";
/** RFC 3339 µs stamp of fractional epoch milliseconds; the date part is formatted once per second. */
export const formatEpochMs = (ms: number): string => {
  const micros = Math.round(ms * 1000);
  const second = Math.floor(micros / 1_000_000);
  if (second !== cachedSecond) {
    const full = formatMicros(BigInt(second) * 1_000_000n);
    cachedSecond = second;
    cachedPrefix = full.slice(0, -7);
  }
  return `${cachedPrefix}${pad(micros - second * 1_000_000, 6)}Z`;
};
