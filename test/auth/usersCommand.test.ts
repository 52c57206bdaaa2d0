import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  createScramVerifier,
  deriveScramVerifier,
  type ScramVerifier,
} from "../../src/auth/scramVerifier.ts";
import { parseUsersFile } from "../../src/auth/usersFile.ts";
import { runUsersCommand } from "../../src/cli/usersCommand.ts";
import { must } from "./fixtures.ts";

let dir = "";
let file = "";
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgwarden-cli-"));
  file = join(dir, "users.txt");
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

type FakeTty = PassThrough & { isTTY: boolean; setRawMode: (mode: boolean) => FakeTty; rawModes: boolean[] };

const fakeTty = (): FakeTty => {
  const stream = new PassThrough() as FakeTty;
  stream.isTTY = true;
  stream.rawModes = [];
  stream.setRawMode = (mode: boolean) => {
    stream.rawModes.push(mode);
    return stream;
  };
  return stream;
};

/** Runs the command with `input` on stdin (a pipe, or a terminal with `tty`). */
const run = async (argv: string[], input = "", options: { tty?: FakeTty } = {}) => {
  const stdin = options.tty ?? new PassThrough();
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (c: Buffer) => {
    out += c.toString();
  });
  stderr.on("data", (c: Buffer) => {
    err += c.toString();
  });
  stdin.end(input);
  const code = await runUsersCommand(argv, { stdin, stdout, stderr });
  return { code, out, err };
};

const usersIn = async (path: string): Promise<Map<string, ScramVerifier>> =>
  must(parseUsersFile(await readFile(path, "utf8")));

/** Whether `verifier` was made from `password`. */
const isFor = (verifier: ScramVerifier | undefined, password: string): boolean =>
  verifier !== undefined &&
  deriveScramVerifier(password, { salt: verifier.salt, iterations: verifier.iterations }).storedKey.equals(
    verifier.storedKey,
  );

describe("pgwarden users add --password-stdin", () => {
  it("adds a user with a 0600 file, printing neither password nor verifier", async () => {
    const r = await run(["add", "alice", "--file", file, "--password-stdin"], "s3cret\n");
    expect(r).toMatchObject({ code: 0, err: "" });
    expect(r.out).toBe(`added user "alice" to ${file}\n`);
    const users = await usersIn(file);
    expect(isFor(users.get("alice"), "s3cret")).toBe(true);
    expect(users.get("alice")?.iterations).toBe(4096);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const v = users.get("alice")!;
    for (const secret of ["s3cret", v.salt.toString("base64"), v.storedKey.toString("base64")]) {
      expect(r.out + r.err).not.toContain(secret);
    }
  });

  it("reads only the first line and strips CRLF", async () => {
    expect(
      (await run(["add", "alice", `--file=${file}`, "--password-stdin"], "pw one\r\nsecond\n")).code,
    ).toBe(0);
    expect(isFor((await usersIn(file)).get("alice"), "pw one")).toBe(true);
  });

  it("accepts a password without a final newline, and non-ASCII passwords", async () => {
    expect((await run(["add", "alice", "--file", file, "--password-stdin"], "p\u00E4ss \u2168")).code).toBe(
      0,
    );
    expect(isFor((await usersIn(file)).get("alice"), "p\u00E4ss IX")).toBe(true);
  });

  it("updates an existing user, keeping comments and other users", async () => {
    const bob = createScramVerifier("bob", { salt: Buffer.alloc(16, 2) });
    await writeFile(file, `# staff\n"alice" "${createScramVerifier("old")}"\n"bob" "${bob}"\n`);
    const r = await run(
      ["add", "alice", "--file", file, "--password-stdin", "--iterations", "5000"],
      "new\n",
    );
    expect(r.code).toBe(0);
    expect(r.out).toBe(`updated the password of user "alice" in ${file}\n`);
    const text = await readFile(file, "utf8");
    expect(text.startsWith("# staff\n")).toBe(true);
    expect(text).toContain(`"bob" "${bob}"`);
    const alice = (await usersIn(file)).get("alice");
    expect(alice?.iterations).toBe(5000);
    expect(isFor(alice, "new")).toBe(true);
  });

  it("handles names that need quoting and names starting with '-' after --", async () => {
    expect((await run(["add", "--file", file, "--password-stdin", "--", '-we"ird'], "x\n")).code).toBe(0);
    expect([...(await usersIn(file)).keys()]).toEqual(['-we"ird']);
  });

  it.each([
    ["an empty password", "\n", "the password is empty"],
    ["no input", "", "no password given"],
    ["a NUL byte", "a\0b\n", "NUL"],
    ["a password over 1024 bytes", `${"x".repeat(1025)}\n`, "longer than 1024 bytes"],
  ])("fails with 1 on %s and writes nothing", async (_name, input, message) => {
    const r = await run(["add", "alice", "--file", file, "--password-stdin"], input);
    expect(r.code).toBe(1);
    expect(r.err).toContain(message);
    await expect(stat(file)).rejects.toThrow();
  });

  it("refuses to add to a broken file, naming the line, and leaves it alone", async () => {
    const broken = `"alice" "${createScramVerifier("a")}"\n"bob" "md5c4ca4238a0b923820dcc509a6f75849b"\n`;
    await writeFile(file, broken);
    const r = await run(["add", "carol", "--file", file, "--password-stdin"], "x\n");
    expect(r.code).toBe(1);
    expect(r.err).toContain("line 2");
    expect(r.err).toContain("only SCRAM-SHA-256 verifiers are accepted");
    expect(await readFile(file, "utf8")).toBe(broken);
  });

  it("fails with 1 when the file cannot be written", async () => {
    const r = await run(
      ["add", "alice", "--file", join(dir, "no", "such", "dir.txt"), "--password-stdin"],
      "x\n",
    );
    expect(r.code).toBe(1);
    expect(r.err).toContain("ENOENT");
  });
});

describe("pgwarden users add at a terminal", () => {
  it("prompts twice with echo off", async () => {
    const tty = fakeTty();
    const r = await run(["add", "alice", "--file", file], "hunter2\rhunter2\r", { tty });
    expect(r.code).toBe(0);
    expect(r.err).toBe('Password for "alice": \nRepeat password: \n');
    expect(r.out + r.err).not.toContain("hunter2");
    expect(tty.rawModes).toEqual([true, false]);
    expect(isFor((await usersIn(file)).get("alice"), "hunter2")).toBe(true);
  });

  it("applies backspace (over a whole UTF-8 character), Ctrl-U and ignores arrow keys", async () => {
    const tty = fakeTty();
    const typed = "x\u0015ab\u00E9\u007F\u001b[D\u001bOAc\u001b[1;5C";
    const r = await run(["add", "alice", "--file", file], `${typed}\rabc\r`, { tty });
    expect(r.code).toBe(0);
    expect(isFor((await usersIn(file)).get("alice"), "abc")).toBe(true);
  });

  it("fails with 1 when the passwords differ", async () => {
    const tty = fakeTty();
    const r = await run(["add", "alice", "--file", file], "one\rtwo\r", { tty });
    expect(r.code).toBe(1);
    expect(r.err).toContain("the passwords do not match");
    expect(tty.rawModes).toEqual([true, false]);
    await expect(stat(file)).rejects.toThrow();
  });

  it("stops on Ctrl-C", async () => {
    const tty = fakeTty();
    const r = await run(["add", "alice", "--file", file], "hun\u0003", { tty });
    expect(r.code).toBe(1);
    expect(r.err).toContain("interrupted");
    expect(tty.rawModes).toEqual([true, false]);
  });

  it("refuses to prompt when stdin is not a terminal (usage error naming --password-stdin)", async () => {
    const r = await run(["add", "alice", "--file", file], "pw\n");
    expect(r.code).toBe(2);
    expect(r.err).toContain("--password-stdin");
  });
});

describe("pgwarden users list", () => {
  it("prints names and iteration counts only", async () => {
    const a = createScramVerifier("a", { iterations: 4096 });
    const b = createScramVerifier("b", { iterations: 8192 });
    await writeFile(file, `# c\n"alice" "${a}"\n"bob" "${b}"\n`);
    const r = await run(["list", "--file", file]);
    expect(r).toEqual({
      code: 0,
      out: "alice\tSCRAM-SHA-256 iterations=4096\nbob\tSCRAM-SHA-256 iterations=8192\n",
      err: "",
    });
    expect(r.out).not.toContain("$");
  });

  it("fails with 1 for a missing or broken file", async () => {
    expect((await run(["list", "--file", file])).code).toBe(1);
    await writeFile(file, '"alice" "plaintext"\n');
    const r = await run(["list", "--file", file]);
    expect(r.code).toBe(1);
    expect(r.err).toContain("line 1");
    expect(r.err).not.toContain('plaintext"');
  });

  it("defaults to ./pgwarden-users.txt", async () => {
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      expect((await run(["add", "alice", "--password-stdin"], "x\n")).code).toBe(0);
      expect((await run(["list"])).out).toBe("alice\tSCRAM-SHA-256 iterations=4096\n");
      await stat(join(dir, "pgwarden-users.txt"));
    } finally {
      process.chdir(cwd);
    }
  });
});

describe("pgwarden users: usage errors exit 2 and name the problem", () => {
  it.each([
    [[], "missing subcommand"],
    [["remove", "alice"], 'unknown subcommand "remove"'],
    [["add"], "missing <name>"],
    [["add", "a", "b", "--password-stdin"], 'unexpected argument "b"'],
    [["add", "a", "--pasword-stdin"], "unknown option --pasword-stdin"],
    [["add", "a", "--file"], "--file needs a value"],
    [["add", "a", "--file="], "--file needs a value"],
    [["add", "a", "--iterations", "abc"], "--iterations must be an integer"],
    [["add", "a", "--iterations", "1000"], "--iterations must be an integer from 4096"],
    [["add", "a", "--iterations=99999999"], "--iterations must be"],
    [["add", "a", "--password-stdin=yes"], "--password-stdin takes no value"],
    [["add", "", "--password-stdin"], "invalid <name>: the user name is empty"],
    [["add", "a\tb", "--password-stdin"], "invalid <name>"],
    [["list", "--iterations", "5000"], "unknown option --iterations for 'users list'"],
    [["list", "extra"], 'unexpected argument "extra"'],
  ])("%j", async (argv, message) => {
    const r = await run(argv, "pw\n");
    expect(r.code).toBe(2);
    expect(r.err).toContain(message);
    expect(r.err).toContain("usage: pgwarden users add");
    expect(r.out).toBe("");
  });

  it("prints usage on --help with exit 0", async () => {
    for (const argv of [["--help"], ["add", "--help"], ["list", "-h"]]) {
      const r = await run(argv);
      expect(r.code).toBe(0);
      expect(r.out).toContain("usage: pgwarden users add <name>");
    }
  });
});
