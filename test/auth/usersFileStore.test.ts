import { chmod, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createScramVerifier } from "../../src/auth/scramVerifier.ts";
import { loadUsersFile, readUsersFileText, writeUsersFileAtomic } from "../../src/auth/usersFileStore.ts";
import { must, mustFail } from "./fixtures.ts";

let dir = "";
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgwarden-users-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const V1 = createScramVerifier("one", { salt: Buffer.alloc(16, 1) });
const mode = async (path: string) => (await stat(path)).mode & 0o777;

describe("writeUsersFileAtomic", () => {
  it("creates the file with mode 0600 and leaves no temporary file", async () => {
    const path = join(dir, "users.txt");
    expect(await writeUsersFileAtomic(path, `"alice" "${V1}"\n`)).toBeUndefined();
    expect(await readFile(path, "utf8")).toBe(`"alice" "${V1}"\n`);
    expect(await mode(path)).toBe(0o600);
    expect(await readdir(dir)).toEqual(["users.txt"]);
  });

  it("replaces an existing file, tightening its mode to 0600", async () => {
    const path = join(dir, "users.txt");
    await writeFile(path, "# old\n", { mode: 0o644 });
    await chmod(path, 0o644);
    expect(await writeUsersFileAtomic(path, "# new\n")).toBeUndefined();
    expect(await readFile(path, "utf8")).toBe("# new\n");
    expect(await mode(path)).toBe(0o600);
  });

  it("writes through a symlink, keeping the link", async () => {
    const real = join(dir, "real.txt");
    const link = join(dir, "link.txt");
    await writeFile(real, "# old\n");
    await symlink(real, link);
    expect(await writeUsersFileAtomic(link, "# new\n")).toBeUndefined();
    expect(await readFile(real, "utf8")).toBe("# new\n");
    expect((await readdir(dir)).sort()).toEqual(["link.txt", "real.txt"]);
  });

  it("returns an error value when the directory does not exist", async () => {
    const error = await writeUsersFileAtomic(join(dir, "missing", "users.txt"), "x");
    expect(error?.code).toBe("PGW_USERS_FILE");
    expect(error?.message).toContain("ENOENT");
  });
});

describe("readUsersFileText and loadUsersFile", () => {
  it("reads a missing file as undefined, but loading it is an error", async () => {
    const path = join(dir, "none.txt");
    expect(await readUsersFileText(path)).toBeUndefined();
    const error = mustFail(await loadUsersFile(path));
    expect(error.message).toBe(`users file ${path} does not exist`);
  });

  it("returns an error value for a directory", async () => {
    expect(mustFail(await readUsersFileText(dir)).message).toContain("EISDIR");
  });

  it("loads and parses the users", async () => {
    const path = join(dir, "users.txt");
    await writeFile(path, `# c\n"alice" "${V1}"\n`);
    expect([...must(await loadUsersFile(path)).keys()]).toEqual(["alice"]);
  });

  it("names the file and the line of a bad entry", async () => {
    const path = join(dir, "users.txt");
    await writeFile(path, `"alice" "${V1}"\n"bob" "hunter2"\n`);
    const error = mustFail(await loadUsersFile(path));
    expect(error.code).toBe("PGW_USERS_FILE");
    expect(error.message).toMatch(
      new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: users file line 2: `),
    );
    expect(error.message).not.toContain("hunter2");
  });
});
