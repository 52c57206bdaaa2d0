import { readFileSync } from "node:fs";

let cached: string | undefined;

/** pgwarden's version, from package.json: what `--version`, the audit trail and the admin console report. */
export const pgwardenVersion = (): string => {
  cached ??= (
    JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }
  ).version;
  return cached;
};
