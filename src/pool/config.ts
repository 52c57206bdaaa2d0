import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";

/** Config sections for transaction-mode pooling, for the lead to merge under `pool:`. */

const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);

export const PreparedStatementsConfig = Schema.Struct({
  /** Map protocol-level prepared statements across server connections in transaction mode. */
  enabled: withDefault(Schema.Boolean, true),
  /**
   * Statements each server connection keeps prepared before the least recently used is closed.
   * 200 is PgBouncer's default (max_prepared_statements since 1.22): enough for ORMs' working sets,
   * while a backend holds at most that many plans (a few MB).
   */
  perServerCapacity: withDefault(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 100_000 })), 200),
});
export type PreparedStatementsConfig = typeof PreparedStatementsConfig.Type;

export const PinningConfig = Schema.Struct({
  /**
   * What transaction mode does with state that cannot move between server connections (LISTEN,
   * session advisory locks, temporary tables, WITH HOLD cursors, SQL PREPARE, LOAD, SET ROLE):
   * "pin" keeps the server connection with the client until released; "refuse" answers an error.
   */
  onSessionState: withDefault(Schema.Literals(["pin", "refuse"]), "pin"),
});
export type PinningConfig = typeof PinningConfig.Type;
