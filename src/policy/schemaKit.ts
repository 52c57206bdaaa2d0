import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";

/** Small schema pieces the policy sections share. */

export const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);

/** Names that end up in log lines: no surrounding blanks, no control characters. */
export const nameIssue = (s: string): string | undefined =>
  s.length === 0
    ? "must not be empty"
    : s.trim() !== s
      ? "must not start or end with whitespace"
      : /[\u0000-\u001f\u007f]/.test(s)
        ? "must not contain control characters"
        : undefined;

export const Name = Schema.String.check(Schema.makeFilter(nameIssue));

export const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0));
export const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));
