import type * as tls from "node:tls";
import { isPgwardenError, type PgwardenError } from "../../errors.ts";
import { buildSecureContext } from "./policy.ts";

/** What a reload did: swapped in a new context, or kept the old one and says why. */
export type ReloadOutcome =
  | { readonly reloaded: true; readonly generation: number }
  | { readonly reloaded: false; readonly generation: number; readonly error: PgwardenError };

export interface ReloadableContext {
  /** The context new handshakes use. Sessions already running keep the one they started with. */
  current(): tls.SecureContext;
  /** How many contexts have been swapped in since creation (0 = the first one). */
  generation(): number;
  /** Re-reads certificate, key, CA and CRL from disk; on any failure the current context stays. */
  reload(): ReloadOutcome;
}

/**
 * A TLS context that can be replaced while the server runs (SIGHUP): `load` re-reads the files
 * and returns context options; the swap happens only once the new context is fully built.
 *
 * @example
 * const ctx = createReloadableContext(() => clientLegContextOptions(config));
 * if (isPgwardenError(ctx)) fail(ctx);
 * process.on("SIGHUP", () => log(ctx.reload()));
 */
export const createReloadableContext = (
  load: () => tls.SecureContextOptions | PgwardenError,
): ReloadableContext | PgwardenError => {
  const build = (): tls.SecureContext | PgwardenError => {
    const options = load();
    return isPgwardenError(options) ? options : buildSecureContext(options);
  };
  const first = build();
  if (isPgwardenError(first)) return first;
  let context = first;
  let generation = 0;
  return {
    current: () => context,
    generation: () => generation,
    reload: () => {
      const next = build();
      if (isPgwardenError(next)) return { reloaded: false, generation, error: next };
      context = next;
      generation += 1;
      return { reloaded: true, generation };
    },
  };
};
