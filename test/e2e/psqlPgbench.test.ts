import { spawn } from "node:child_process";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

let proxy: TestProxy;
let admin: pg.Client;
beforeAll(async () => {
  proxy = await startProxy();
  admin = await directClient();
  await admin.query("DROP DATABASE IF EXISTS pgw_bench");
  await admin.query("CREATE DATABASE pgw_bench");
});
afterAll(async () => {
  await proxy.close();
  await admin.query("DROP DATABASE IF EXISTS pgw_bench WITH (FORCE)");
  await admin.end();
});

/** Runs a client asynchronously: the proxy lives in this process, so blocking it would deadlock. */
const run = (
  cmd: string,
  args: string[],
  input?: string,
): Promise<{ code: number | null; out: string; err: string }> =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, PGCONNECT_TIMEOUT: "10" } });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out, err }));
    child.stdin.end(input ?? "");
  });
const target = () => ["-h", "127.0.0.1", "-p", String(proxy.port), "-U", "postgres"];

describe("psql through pgwarden", () => {
  it("runs a script with \\copy both ways and stops on error with exit 3", async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgw-psql-"));
    await writeFile(join(dir, "in.tsv"), "1\tone\n2\ttwo\n3\tthree\n");
    const script = [
      "DROP TABLE IF EXISTS pgw_psql;",
      "CREATE TABLE pgw_psql (id int, name text);",
      `\\copy pgw_psql from '${join(dir, "in.tsv")}'`,
      "INSERT INTO pgw_psql VALUES (4, 'four');",
      "SELECT id, name FROM pgw_psql ORDER BY id;",
      `\\copy (SELECT name FROM pgw_psql ORDER BY id DESC) to '${join(dir, "out.txt")}'`,
      "DROP TABLE pgw_psql;",
    ].join("\n");
    const ok = await run(
      "psql",
      ["-X", "-At", "-v", "ON_ERROR_STOP=1", ...target(), "-d", "postgres"],
      script,
    );
    expect(ok.err).not.toContain("ERROR");
    expect(ok.code).toBe(0);
    expect(ok.out).toBe(
      "DROP TABLE\nCREATE TABLE\nCOPY 3\nINSERT 0 1\n1|one\n2|two\n3|three\n4|four\nCOPY 4\nDROP TABLE\n",
    );
    expect(await readFile(join(dir, "out.txt"), "utf8")).toBe("four\nthree\ntwo\none\n");

    const bad = await run(
      "psql",
      ["-X", "-At", "-v", "ON_ERROR_STOP=1", ...target(), "-d", "postgres"],
      "SELECT 1;\nSELECT nope;\nSELECT 2;\n",
    );
    expect(bad.code).toBe(3);
    expect(bad.out).toBe("1\n");
    expect(bad.err).toContain('column "nope" does not exist');
  });
});

describe("pgbench through pgwarden", () => {
  const failed = (out: string) => /number of failed transactions: (\d+)/.exec(out)?.[1];
  const processed = (out: string) =>
    Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1] ?? 0);

  it("initialises, then runs simple, extended and prepared protocol with zero failed transactions", async () => {
    const init = await run("pgbench", ["-i", "-s", "1", "-q", ...target(), "pgw_bench"]);
    expect(init.code, init.err).toBe(0);
    for (const mode of ["simple", "extended", "prepared"]) {
      const r = await run("pgbench", [
        "-n",
        "-c",
        "4",
        "-j",
        "2",
        "-T",
        "3",
        "-M",
        mode,
        ...target(),
        "pgw_bench",
      ]);
      expect(r.code, r.err).toBe(0);
      expect(failed(r.out) ?? "0").toBe("0");
      expect(processed(r.out)).toBeGreaterThan(100);
    }
  }, 60_000);
});
