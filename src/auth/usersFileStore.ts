import { randomBytes } from "node:crypto";
import { type FileHandle, open, readFile, realpath, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import type { ScramVerifier } from "./scramVerifier.ts";
import { parseUsersFile } from "./usersFile.ts";

/** Owner read/write only: the file holds verifiers, which allow offline password guessing. */
export const USERS_FILE_MODE = 0o600;

const storeError = (message: string): PgwardenError =>
  pgwardenError("PGW_USERS_FILE", SqlState.internalError, message);

const errnoOf = (e: unknown): string => {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : e instanceof Error ? e.message : String(e);
};

/**
 * The users file's text, or undefined when it does not exist.
 *
 * @example const text = await readUsersFileText("./pgwarden-users.txt");
 */
export const readUsersFileText = async (path: string): Promise<string | undefined | PgwardenError> => {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return undefined;
    return storeError(`cannot read users file ${path}: ${errnoOf(e)}`);
  }
};

/**
 * Reads and parses the users file; a missing file is an error.
 *
 * @example const users = await loadUsersFile(path); if (!isPgwardenError(users)) users.get("alice");
 */
export const loadUsersFile = async (path: string): Promise<Map<string, ScramVerifier> | PgwardenError> => {
  const text = await readUsersFileText(path);
  if (text === undefined) return storeError(`users file ${path} does not exist`);
  if (isPgwardenError(text)) return text;
  const users = parseUsersFile(text);
  return isPgwardenError(users) ? storeError(`${path}: ${users.message}`) : users;
};

/**
 * Replaces the file atomically: readers see the old or the new text, never a mix. Writes a
 * temporary file (mode 0600) next to the target, syncs it and renames it over the target. A
 * symlinked target is followed, so the link stays a link. Resolves to undefined on success.
 *
 * @example const failed = await writeUsersFileAtomic(path, upserted);
 */
export const writeUsersFileAtomic = async (
  path: string,
  text: string,
): Promise<PgwardenError | undefined> => {
  let target = path;
  try {
    target = await realpath(path);
  } catch {
    // Not there yet: create it where it was asked for.
  }
  const dir = dirname(target);
  const temp = join(dir, `.${basename(target)}.${randomBytes(6).toString("hex")}.tmp`);
  let handle: FileHandle | undefined;
  try {
    handle = await open(temp, "wx", USERS_FILE_MODE);
    // The umask can only clear bits; chmod anyway in case the mode argument was not honoured.
    await handle.chmod(USERS_FILE_MODE);
    await handle.writeFile(text, "utf8");
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(temp, target);
  } catch (e) {
    await handle?.close().catch(() => undefined);
    await rm(temp, { force: true }).catch(() => undefined);
    return storeError(`cannot write users file ${path}: ${errnoOf(e)}`);
  }
  // Sync the directory so the rename itself survives a crash; not every platform allows it.
  try {
    const dirHandle = await open(dir, "r");
    await dirHandle.sync().finally(() => dirHandle.close());
  } catch {
    // Best effort.
  }
  return undefined;
};
