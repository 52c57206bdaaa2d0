import { Exit, Schema } from "effect";
import { describe, expect, it } from "vitest";
import { PinningConfig, PreparedStatementsConfig } from "../../src/pool/config.ts";

describe("pool config schemas", () => {
  it("fill in defaults", () => {
    expect(Schema.decodeUnknownSync(PreparedStatementsConfig)({})).toEqual({
      enabled: true,
      perServerCapacity: 200,
    });
    expect(Schema.decodeUnknownSync(PinningConfig)({})).toEqual({ onSessionState: "pin" });
  });

  it("reject values the pool cannot use", () => {
    for (const bad of [{ perServerCapacity: 0 }, { perServerCapacity: 1.5 }, { enabled: "yes" }]) {
      expect(Exit.isFailure(Schema.decodeUnknownExit(PreparedStatementsConfig)(bad))).toBe(true);
    }
    expect(Exit.isFailure(Schema.decodeUnknownExit(PinningConfig)({ onSessionState: "ignore" }))).toBe(true);
    expect(Schema.decodeUnknownSync(PinningConfig)({ onSessionState: "refuse" })).toEqual({
      onSessionState: "refuse",
    });
  });
});
