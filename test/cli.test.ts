import { spawnSync } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CLI } from "./support/cli.ts";

const cli = (args: string[], input?: string) => {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: "utf8",
    input,
    timeout: 30_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

describe("pgwarden CLI", () => {
  it("prints help and version with exit 0", () => {
    const h = cli(["--help"]);
    expect(h.code).toBe(0);
    expect(h.out).toContain("pgwarden serve");
    const v = cli(["--version"]);
    expect(v.code).toBe(0);
    expect(v.out.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it("names a bad flag and exits 2", () => {
    const r = cli(["serve", "--listne", "x"]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("'--listne'");
    expect(cli(["frobnicate"]).code).toBe(2);
    const l = cli(["serve", "--config", "/nonexistent.yaml", "--listen", "nocolon"]);
    expect(l.code).toBe(2);
  });

  it("names the bad configuration key and its expected type, exit 2", async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgw-cli-"));
    const file = join(dir, "pgwarden.yaml");
    await writeFile(file, "listen:\n  port: abc\nupstream:\n  hots: x\n");
    const r = cli(["serve", "--config", file]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("Expected number\n    at listen.port");
    expect(r.err).toContain("at upstream.hots");
  });

  it("refuses to start with SCRAM and no users file, saying how to create one", async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgw-cli-"));
    const file = join(dir, "pgwarden.yaml");
    await writeFile(
      file,
      `listen: { port: 0 }\nauth: { usersFile: ${join(dir, "users.txt")} }\nlog: { level: silent }\n`,
    );
    const r = cli(["serve", "--config", file]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("does not exist");
    expect(r.err).toContain("pgwarden users add NAME");
  });

  it("adds a user and lists it, never printing the password", async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgw-cli-"));
    const users = join(dir, "users.txt");
    const r = cli(["users", "add", "alice", "--file", users, "--password-stdin"], "correct horse\n");
    expect(r.code).toBe(0);
    expect(r.out + r.err).not.toContain("correct horse");
    const l = cli(["users", "list", "--file", users]);
    expect(l.code).toBe(0);
    expect(l.out).toContain("alice");
  });

  it("reports committed diagrams as current", () => {
    const r = cli(["diagrams", "--check"]);
    expect(r.code).toBe(0);
  });
});
