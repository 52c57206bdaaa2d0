import { randomBytes } from "node:crypto";
import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";
import { AuditSinksConfig } from "../adapters/audit/sinkConfig.ts";
import { InstanceId, StatementTextMode } from "./AuditEvent.ts";
import { AuditIntegrityConfig } from "./AuditIntegrityConfig.ts";

/**
 * The `audit:` section of the configuration: where the local segments go, what happens when the
 * trail cannot take records (AU-5), how much statement text is kept, the integrity keys
 * (AuditIntegrityConfig) and the remote sinks (AuditSinksConfig).
 */
const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);
const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));
const Millis = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));

export const AuditOnFailure = Schema.Literals(["block", "alert"]);

export const AuditConfig = Schema.Struct({
  /** Local append-only segments: always written when audit is on. */
  dir: Schema.NonEmptyString,
  onFailure: withDefault(AuditOnFailure, "block"),
  statements: withDefault(StatementTextMode, "normalized"),
  /** Names this instance's chain and segment files; the host name unless set. */
  instance: Schema.optionalKey(InstanceId),
  /** Events waiting for the chaining fiber before emit drops them (and, under block, refuses). */
  queueMax: withDefault(PositiveInt, 65_536),
  /** How long shutdown waits for every queue to drain and every sink to catch up. */
  drainTimeoutMs: withDefault(Millis, 10_000),
  ...AuditIntegrityConfig.fields,
  sinks: withDefault(AuditSinksConfig, {}),
});
export type AuditConfig = typeof AuditConfig.Type;

/** An instance id from a host name: what InstanceId allows, at most 64 characters. */
export const instanceIdFrom = (host: string): string => {
  const s = host.replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  return (s === "" ? "pgwarden" : s).slice(0, 64);
};

/** A per-run id: distinguishes restarts of one instance in its records. */
export const newBootId = (): string => randomBytes(8).toString("hex");
