import { Schema } from "effect";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { Name, withDefault } from "../policy/schemaKit.ts";

/** The `admin:` config section, for the lead to merge: who may open the admin console, and where. */
export const AdminConfig = Schema.Struct({
  /** Identities (as authenticated, the names grants use) allowed on the console; none by default. */
  identities: withDefault(Schema.Array(Name), []),
  /** The database name that opens the console instead of an upstream session. */
  database: withDefault(Name.check(Schema.isMaxLength(63)), "pgwarden"),
});
export type AdminConfig = typeof AdminConfig.Type;

/** The section itself may be absent: then nobody gets the console. */
export const AdminSection = withDefault(AdminConfig, {});

/** Where an authenticated client goes: the console, the pools, or away. */
export type AdminRoute = "admin" | "upstream" | PgwardenError;

/**
 * Decides after authentication: asking for the console database makes an admin session for a
 * listed identity and a refusal for anyone else (never an upstream session under that name).
 */
export const routeAdmin = (config: AdminConfig, identity: string, database: string): AdminRoute => {
  if (database !== config.database) return "upstream";
  if (config.identities.includes(identity)) return "admin";
  return pgwardenError(
    "PGW_ACCESS_DENIED",
    SqlState.invalidAuthorization,
    `access to database "${database}" is not granted to "${identity}"`,
  );
};
