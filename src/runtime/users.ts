import type { ScramVerifier } from "../auth/scramVerifier.ts";
import { parseUsersFile, upsertUser } from "../auth/usersFile.ts";
import { loadUsersFile, readUsersFileText, writeUsersFileAtomic } from "../auth/usersFileStore.ts";
import { isPgwardenError, type PgwardenError } from "../errors.ts";

/** The client identities pgwarden accepts: user name → SCRAM verifier. */
export const loadUsers = (path: string): Promise<ReadonlyMap<string, ScramVerifier> | PgwardenError> =>
  loadUsersFile(path);

/** Adds `name` to the users file unless it is there already (embedded mode's first run). */
export const ensureUser = async (
  path: string,
  name: string,
  verifier: () => string,
): Promise<PgwardenError | undefined> => {
  const text = await readUsersFileText(path);
  if (isPgwardenError(text)) return text;
  const current = text ?? "";
  const users = parseUsersFile(current);
  if (isPgwardenError(users)) return users;
  if (users.has(name)) return undefined;
  const next = upsertUser(current, name, verifier());
  if (isPgwardenError(next)) return next;
  return writeUsersFileAtomic(path, next);
};
