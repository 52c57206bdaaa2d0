import { Schema } from "effect";
import { describe, expect, it } from "vitest";
import { AuditIntegrityConfig, signingSourceError } from "../../src/audit/AuditIntegrityConfig.ts";

const decode = Schema.decodeUnknownSync(AuditIntegrityConfig);

describe("AuditIntegrityConfig", () => {
  it("fills the defaults", () => {
    const c = decode({ hmacKeyFile: "/k", signing: { pemFile: "/s.pem" } });
    expect(c).toMatchObject({
      segmentMaxBytes: 67_108_864,
      segmentMaxAgeMs: 3_600_000,
      fsyncBatchMs: 5,
      previousHmacKeyFiles: [],
    });
    expect(signingSourceError(c)).toBeUndefined();
  });

  it("requires one signing source and one PIN source", () => {
    expect(signingSourceError(decode({ hmacKeyFile: "/k", signing: {} }))).toContain("exactly one");
    const p = { module: "/m.so", tokenLabel: "t", keyLabel: "k" };
    expect(signingSourceError(decode({ hmacKeyFile: "/k", signing: { pkcs11: p } }))).toContain(
      "pinFile and pinEnv",
    );
    expect(
      signingSourceError(decode({ hmacKeyFile: "/k", signing: { pkcs11: { ...p, pinEnv: "PIN" } } })),
    ).toBeUndefined();
    expect(() => decode({ hmacKeyFile: "/k", signing: { pemFile: "/s" }, segmentMaxBytes: 0 })).toThrow();
  });
});
