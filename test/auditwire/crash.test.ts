import type { ChildProcess } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { makeKeys } from "../audit/support/auditLog.ts";
import { postgresInfo } from "../support/postgres.ts";
import { serveProcess } from "../support/serve.ts";
import { eventually, expectAllValid, readRecords, verifyCli } from "./support.ts";

/** `pgwarden serve --config` as a real process. */
const serve = (config: string) => serveProcess(["--config", config]);

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

describe("audit trail across kill -9", () => {
  it("keeps everything up to the last fsync, verify flags the unsealed tail, the next start seals it", async () => {
    const info = postgresInfo();
    const keys = await makeKeys("crash");
    const work = await mkdtemp(join(tmpdir(), "pgw-auditwire-crash-"));
    const dir = join(work, "audit");
    const port = await freePort();
    const config = join(work, "pgwarden.yaml");
    await writeFile(
      config,
      `listen: { port: ${port} }\nupstream: { host: ${info.host}, port: ${info.port}, user: u_trust }\n` +
        'access: { grants: [{ identity: "*", databases: ["*"] }] }\n' +
        "auth: { method: trust }\nlog: { level: info }\n" +
        `audit: { dir: ${dir}, instance: crash, statements: full, hmacKeyFile: ${keys.hmacKeyFile}, signing: { pemFile: ${keys.signingKeyFile} } }\n`,
    );
    const first = serve(config);
    children.push(first.child);
    await eventually("the listening line", () => first.out.stdout.includes("listening"), 20_000);
    expect(first.out.stderr).toContain(`audit trail in ${dir}`);
    const c = new pg.Client({ host: "127.0.0.1", port, user: "anyone", database: "postgres" });
    // The kill below (or afterEach's, when an expectation fails first) ends this client's socket.
    c.on("error", () => {});
    await c.connect();
    for (let i = 0; i < 20; i++) await c.query(`SELECT ${i} AS crash_marker`);
    // The answer reaches the client before its record is fsync'd: wait for the last one on disk.
    await eventually("the last statement on disk", async () =>
      (await readRecords(dir)).some((r) => String(r.text).includes("SELECT 19 AS crash_marker")),
    );
    first.child.kill("SIGKILL");
    await first.exited;

    const crashed = await readRecords(dir);
    expectAllValid(crashed);
    const v1 = verifyCli(dir, keys);
    expect(v1.code, v1.stdout).toBe(2);
    expect(v1.stdout).toMatch(/unsealed/i);
    expect(crashed.filter((r) => r.kind === "statement")).toHaveLength(20);

    const second = serve(config);
    children.push(second.child);
    await eventually("the listening line again", () => second.out.stdout.includes("listening"), 20_000);
    second.child.kill("SIGTERM");
    const code = await second.exited;
    expect({ code, signal: second.child.signalCode }, second.out.stderr.slice(-2000)).toEqual({
      code: 0,
      signal: null,
    });
    const after = await readRecords(dir);
    expectAllValid(after);
    expect(after.map((r) => r.seq)).toEqual(after.map((_, i) => i + 1));
    const seals = after.filter((r) => r.kind === "checkpoint").map((r) => r.reason);
    expect(seals).toEqual(["recovery", "shutdown"]);
    const v2 = verifyCli(dir, keys);
    expect(v2.code, v2.stdout).toBe(0);
  }, 60_000);
});
