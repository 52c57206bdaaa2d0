/**
 * What the tests start as `pgwarden`: the installed entry, so they run the bundle that `npm start`
 * runs (the global set-up rebuilds it when the sources changed) rather than the sources beside it.
 */
export const CLI = "bin/pgwarden.js";
