import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";

/** One entry of `access.grants`: which databases an identity may ask for, and as which upstream role. */
export interface GrantRule {
  readonly identity: string;
  readonly databases: readonly string[];
  readonly role?: string | undefined;
}

export interface GrantPolicy {
  readonly grants: readonly GrantRule[];
  /** Role used when the matching grant names none (`upstream.user`). */
  readonly defaultRole: string | undefined;
  /** Whether the client's own user name may serve as the role when nothing else names one. */
  readonly fallbackToClientUser: boolean;
}

/** Where a client's session goes upstream: the pool key of the pooling issue. */
export interface Destination {
  readonly database: string;
  readonly role: string;
}

/** Destinations by (database, role): thousands of sessions to one database share one object. */
const destinations = new Map<string, Destination>();
const MAX_DESTINATIONS = 4096;

const destinationOf = (database: string, role: string): Destination => {
  const key = `${database}\u0000${role}`;
  let d = destinations.get(key);
  if (d === undefined) {
    d = Object.freeze({ database, role });
    if (destinations.size < MAX_DESTINATIONS) destinations.set(key, d);
  }
  return d;
};

/**
 * The client is told what it asked for and who it is, never which role or server it would have
 * reached: those are the operator's business, and naming them helps an attacker map the estate.
 */
const denied = (message: string): PgwardenError =>
  pgwardenError("PGW_ACCESS_DENIED", SqlState.invalidAuthorization, message);

/**
 * Decides the upstream database and role for an identity asking for a database: the first grant
 * whose identity matches (exactly, or "*") decides; no grant, a database outside it, or no role
 * to log in as all end in 28000.
 */
export const resolveGrant = (
  policy: GrantPolicy,
  identity: string,
  database: string,
): Destination | PgwardenError => {
  const grant = policy.grants.find((g) => g.identity === identity || g.identity === "*");
  if (grant === undefined) return denied(`no access is granted to "${identity}"`);
  if (!grant.databases.includes(database) && !grant.databases.includes("*")) {
    return denied(`access to database "${database}" is not granted to "${identity}"`);
  }
  const role = grant.role ?? policy.defaultRole ?? (policy.fallbackToClientUser ? identity : undefined);
  if (role === undefined) return denied(`no database role is configured for "${identity}"`);
  return destinationOf(database, role);
};
