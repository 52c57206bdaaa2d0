import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { formatMicros, makeMicrosClock, TIMESTAMP_PATTERN } from "../../src/audit/timestamp.ts";

describe("audit time stamps", () => {
  it("formats RFC 3339 UTC with exactly six fractional digits", () => {
    expect(formatMicros(0n)).toBe("1970-01-01T00:00:00.000000Z");
    expect(formatMicros(1_700_000_000_123_456n)).toBe("2023-11-14T22:13:20.123456Z");
    expect(formatMicros(951_782_400_000_001n)).toBe("2000-02-29T00:00:00.000001Z");
  });

  test.prop([fc.bigInt({ min: 0n, max: 253_402_300_799_999_999n })])(
    "agrees with Date to the millisecond and matches the pattern",
    (us) => {
      const s = formatMicros(us);
      expect(s).toMatch(TIMESTAMP_PATTERN);
      expect(Date.parse(s)).toBe(Number(us / 1000n));
      expect(s.slice(20, 26)).toBe(String(us % 1_000_000n).padStart(6, "0"));
    },
  );

  it("advances by the monotonic clock between wall readings and follows a stepped wall clock", () => {
    let wall = 1_000_000;
    let mono = 5_000_000_000n;
    const clock = makeMicrosClock(
      () => wall,
      () => mono,
    );
    expect(clock.nowMicros()).toBe(1_000_000_000n);
    mono += 1_500n; // 1.5 µs later, wall clock unchanged at ms resolution
    expect(clock.nowMicros()).toBe(1_000_000_001n);
    wall += 60_000; // stepped a minute ahead
    expect(clock.nowMicros()).toBe(1_060_000_000n);
    expect(clock.now()).toMatch(TIMESTAMP_PATTERN);
  });

  it("stamps the real clock within a few ms of Date.now()", () => {
    const c = makeMicrosClock();
    expect(Math.abs(Date.parse(c.now()) - Date.now())).toBeLessThan(50);
  });
});
