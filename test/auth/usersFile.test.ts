import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  createScramVerifier,
  formatScramVerifier,
  parseScramVerifier,
} from "../../src/auth/scramVerifier.ts";
import { formatUsersFile, parseUsersFile, upsertUser } from "../../src/auth/usersFile.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { must, mustFail } from "./fixtures.ts";

const salt = Buffer.alloc(16, 1);
const V1 = createScramVerifier("one", { salt, iterations: 4096 });
const V2 = createScramVerifier("two", { salt, iterations: 5000 });
const V3 = createScramVerifier("three", { salt, iterations: 6000 });

describe("parseUsersFile", () => {
  it("reads entries, skipping comments and blank lines", () => {
    const text = [
      "# pgwarden users",
      "",
      `"alice" "${V1}"`,
      `   # indented comment`,
      ` \t"bob"\t  "${V2}"  `,
      "",
    ].join("\n");
    const users = must(parseUsersFile(text));
    expect([...users.keys()]).toEqual(["alice", "bob"]);
    expect(users.get("alice")).toEqual(must(parseScramVerifier(V1)));
    expect(users.get("bob")?.iterations).toBe(5000);
  });

  it('unescapes "" inside a quoted name', () => {
    const users = must(parseUsersFile(`"say ""hi"" \u00E9" "${V1}"\n`));
    expect([...users.keys()]).toEqual(['say "hi" \u00E9']);
  });

  it("accepts CRLF line endings, a BOM and a last line without newline", () => {
    const users = must(parseUsersFile(`\uFEFF"alice" "${V1}"\r\n# c\r\n"bob" "${V2}"`));
    expect([...users.keys()]).toEqual(["alice", "bob"]);
  });

  it("reads an empty file as no users", () => {
    expect(must(parseUsersFile("")).size).toBe(0);
  });

  it("refuses md5 hashes, naming the line and saying only SCRAM is accepted", () => {
    const error = mustFail(
      parseUsersFile(`# x\n"alice" "${V1}"\n"bob" "md5c4ca4238a0b923820dcc509a6f75849b"\n`),
    );
    expect(error.code).toBe("PGW_USERS_FILE");
    expect(error.message).toMatch(/^users file line 3: user "bob": md5 hashes are not accepted/);
    expect(error.message).toContain("only SCRAM-SHA-256 verifiers are accepted");
    expect(error.message).not.toContain("c4ca4238");
  });

  it("refuses plaintext passwords without repeating them", () => {
    const error = mustFail(parseUsersFile('"alice" "hunter2"\n'));
    expect(error.message).toMatch(/^users file line 1: user "alice": .*plaintext/);
    expect(error.message).toContain("only SCRAM-SHA-256 verifiers are accepted");
    expect(error.message).not.toContain("hunter2");
  });

  it("refuses a broken verifier without repeating it", () => {
    const broken = V1.replace(/:[^:]+$/, ":AAAA");
    const error = mustFail(parseUsersFile(`"alice" "${broken}"\n`));
    expect(error.message).toMatch(
      /^users file line 1: user "alice": invalid SCRAM-SHA-256 verifier: ServerKey/,
    );
    expect(error.message).not.toContain(V1.split("$")[2]!.split(":")[0]!);
  });

  it.each([
    ["an unquoted name", `alice "${V1}"`, "a quoted user name first"],
    ["an unterminated name", `"alice ${V1}`, "a quoted user name first"],
    ["no space after the name", `"alice"x "${V1}"`, "a space after the user name"],
    ["an escaped quote running into the verifier", `"alice""${V1}"`, "a space after the user name"],
    ["a missing verifier", `"alice"`, "a space after the user name"],
    ["an unquoted verifier", `"alice" ${V1}`, "a quoted verifier"],
    ["an unterminated verifier", `"alice" "${V1}`, "a quoted verifier"],
    ["text after the verifier", `"alice" "${V1}" # comment`, "unexpected text"],
    ["an empty name", `"" "${V1}"`, "the user name is empty"],
    ["a control character in the name", `"al\u0001ice" "${V1}"`, "control characters"],
  ])("refuses %s, naming the line", (_name, line, message) => {
    const error = mustFail(parseUsersFile(`# header\n\n${line}\n`));
    expect(error.message).toMatch(/^users file line 3: /);
    expect(error.message).toContain(message);
  });

  it("refuses a user defined twice", () => {
    const error = mustFail(parseUsersFile(`"alice" "${V1}"\n"bob" "${V2}"\n"alice" "${V3}"\n`));
    expect(error.message).toBe('users file line 3: user "alice" is already defined on line 1');
  });
});

describe("formatUsersFile", () => {
  it("writes one quoted line per user", () => {
    const users = new Map([
      ["alice", must(parseScramVerifier(V1))],
      ['b"ob', must(parseScramVerifier(V2))],
    ]);
    expect(formatUsersFile(users)).toBe(`"alice" "${V1}"\n"b""ob" "${V2}"\n`);
  });

  const name = fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !/[\x00-\x1F\x7F]/.test(s));
  test.prop([fc.uniqueArray(name, { maxLength: 5 })])("round-trips through parseUsersFile", (names) => {
    const v = must(parseScramVerifier(V1));
    const users = new Map(names.map((n) => [n, v]));
    expect(must(parseUsersFile(formatUsersFile(users)))).toEqual(users);
  });
});

describe("upsertUser", () => {
  const base = `# pgwarden users\n\n"alice" "${V1}"\n# bob is on call\n"bob" "${V2}"\n`;

  it("appends a new user and keeps everything else", () => {
    expect(must(upsertUser(base, "carol", V3))).toBe(`${base}"carol" "${V3}"\n`);
  });

  it("replaces an existing user's line in place", () => {
    expect(must(upsertUser(base, "alice", V3))).toBe(base.replace(`"alice" "${V1}"`, `"alice" "${V3}"`));
  });

  it("adds a newline before appending to a file without one", () => {
    expect(must(upsertUser(`"alice" "${V1}"`, "bob", V2))).toBe(`"alice" "${V1}"\n"bob" "${V2}"\n`);
  });

  it("starts an empty file", () => {
    expect(must(upsertUser("", 'q"uote', V1))).toBe(`"q""uote" "${V1}"\n`);
  });

  it("keeps CRLF line endings and a BOM", () => {
    const crlf = `\uFEFF"alice" "${V1}"\r\n# c\r\n`;
    expect(must(upsertUser(crlf, "alice", V2))).toBe(`\uFEFF"alice" "${V2}"\r\n# c\r\n`);
    expect(must(upsertUser(crlf, "bob", V2))).toBe(`${crlf}"bob" "${V2}"\r\n`);
  });

  it("refuses to touch a file that does not parse", () => {
    const error = mustFail(upsertUser(`"alice" "md5c4ca4238a0b923820dcc509a6f75849b"\n`, "bob", V2));
    expect(error.message).toMatch(/^users file line 1:/);
  });

  it("refuses an invalid verifier or name", () => {
    expect(mustFail(upsertUser(base, "carol", "hunter2")).message).not.toContain("hunter2");
    expect(isPgwardenError(upsertUser(base, "", V1))).toBe(true);
    expect(isPgwardenError(upsertUser(base, "a\nb", V1))).toBe(true);
  });

  const name = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => !/[\x00-\x1F\x7F]/.test(s));
  test.prop([fc.uniqueArray(name, { maxLength: 4 }), name])(
    "sets the one user and leaves the others as they were",
    (names, target) => {
      const v1 = must(parseScramVerifier(V1));
      const text = `# header\n${formatUsersFile(names.map((n) => [n, v1] as const))}`;
      const after = must(parseUsersFile(must(upsertUser(text, target, V2))));
      expect(after.get(target)).toEqual(must(parseScramVerifier(V2)));
      for (const n of names) if (n !== target) expect(after.get(n)).toEqual(v1);
      expect(after.size).toBe(new Set([...names, target]).size);
      expect(formatScramVerifier(after.get(target)!)).toBe(V2);
    },
  );
});

describe("parseUsersFile never leaks a secret through a user name", () => {
  it.each([
    ["an md5 hash", "md5c4ca4238a0b923820dcc509a6f75849b"],
    ["a verifier", V1],
  ])("when a missing quote runs %s into the name", (_what, secret) => {
    const error = mustFail(parseUsersFile(`"alice""${secret}" "x"\n`));
    expect(error.message).not.toContain(secret.slice(3, 20));
    expect(error.message).toContain("the user on this line");
  });
});
