import * as Context from "effect/Context";
import type { ScramVerifier } from "../auth/scramVerifier.ts";
import type { CancelRegistry as Registry } from "./CancelRegistry.ts";
import type { PgwardenConfig } from "./config.ts";
import type { EventSink as Sink } from "./EventSink.ts";

/**
 * The services the proxy program runs on. Tests and the CLI provide them; the audit issue
 * provides a real EventSink.
 */

export class Config extends Context.Service<Config, PgwardenConfig>()("pgwarden/Config") {}

/** The client identities pgwarden accepts, as currently loaded (the users file reloads on SIGHUP). */
export class Users extends Context.Service<Users, () => ReadonlyMap<string, ScramVerifier>>()(
  "pgwarden/Users",
) {}

export class Cancels extends Context.Service<Cancels, Registry>()("pgwarden/CancelRegistry") {}

export class Events extends Context.Service<Events, Sink>()("pgwarden/EventSink") {}
