import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";

/**
 * The integrity settings of `audit:` (the lead merges this under the config's `audit` key).
 * Defaults: 64 MiB or one hour per segment, 5 ms of batching per fsync.
 */
const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);
const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));

export const Pkcs11SigningConfig = Schema.Struct({
  module: Schema.String,
  tokenLabel: Schema.optionalKey(Schema.String),
  slot: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  pinFile: Schema.optionalKey(Schema.String),
  /** Name of the environment variable holding the PIN. */
  pinEnv: Schema.optionalKey(Schema.String),
  keyLabel: Schema.String,
});

export const AuditSigningConfig = Schema.Struct({
  /** EC P-256/P-384 private key, PEM (PKCS#8 or SEC1), unencrypted. */
  pemFile: Schema.optionalKey(Schema.String),
  pkcs11: Schema.optionalKey(Pkcs11SigningConfig),
});

export const AuditIntegrityConfig = Schema.Struct({
  /** Hex key, ≥ 32 bytes, mode 0600 or 0640 (`openssl rand -hex 32`). */
  hmacKeyFile: Schema.String,
  /** Keys the log may still be under after a key change while stopped. */
  previousHmacKeyFiles: withDefault(Schema.Array(Schema.String), []),
  signing: AuditSigningConfig,
  segmentMaxBytes: withDefault(PositiveInt, 64 * 1024 * 1024),
  segmentMaxAgeMs: withDefault(PositiveInt, 3_600_000),
  fsyncBatchMs: withDefault(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)), 5),
});
export type AuditIntegrityConfig = typeof AuditIntegrityConfig.Type;

/** Exactly one signing key source: a checkpoint must have one signer. */
export const signingSourceError = (c: AuditIntegrityConfig): string | undefined => {
  const n = Number(c.signing.pemFile !== undefined) + Number(c.signing.pkcs11 !== undefined);
  if (n !== 1) return "audit.signing: set exactly one of pemFile and pkcs11";
  const p = c.signing.pkcs11;
  if (p !== undefined && (p.pinFile === undefined) === (p.pinEnv === undefined))
    return "audit.signing.pkcs11: set exactly one of pinFile and pinEnv";
  if (p !== undefined && p.tokenLabel === undefined && p.slot === undefined)
    return "audit.signing.pkcs11: set tokenLabel or slot";
  return undefined;
};
