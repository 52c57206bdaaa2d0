import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkBinariesReachable, unreachableDirectory } from "../../src/adapters/embeddedPostgres.ts";

/**
 * As root, the embedded PostgreSQL runs as the `postgres` user, who cannot enter a checkout inside
 * root's mode-700 home folder. pgwarden must say so at once rather than fail obscurely.
 */
describe("embedded PostgreSQL binaries out of the postgres user's reach", () => {
  const made: string[] = [];
  afterAll(async () => {
    for (const d of made) await rm(d, { recursive: true, force: true });
  });

  it("names the first directory others cannot enter", async () => {
    const top = await mkdtemp(join(tmpdir(), "pgw-reach-"));
    made.push(top);
    const home = join(top, "root-home");
    const bin = join(home, "checkout", "node_modules", "bin");
    await mkdir(bin, { recursive: true });
    await writeFile(join(bin, "postgres"), "");
    await chmod(top, 0o755);
    await chmod(home, 0o700);
    expect(unreachableDirectory(join(bin, "postgres"))).toBe(home);
    await chmod(home, 0o711);
    expect(unreachableDirectory(join(bin, "postgres"))).toBeUndefined();
  });

  it("finds this checkout's binaries reachable (the test run itself depends on it)", async () => {
    expect(await checkBinariesReachable()).toBeUndefined();
  });
});
