import { createScramVerifier, SCRAM_DEFAULT_ITERATIONS } from "../auth/scramVerifier.ts";
import { checkUserName, parseUsersFile, upsertUser } from "../auth/usersFile.ts";
import { loadUsersFile, readUsersFileText, writeUsersFileAtomic } from "../auth/usersFileStore.ts";
import { isPgwardenError } from "../errors.ts";

export interface UsersCommandIo {
  readonly stdin: NodeJS.ReadableStream;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

export const DEFAULT_USERS_FILE = "./pgwarden-users.txt";
/** Bounds what is read from stdin; far above any password a person types or a generator emits. */
export const MAX_PASSWORD_BYTES = 1024;
const MIN_ITERATIONS = SCRAM_DEFAULT_ITERATIONS;
// Every client login pays this many PBKDF2 rounds; beyond it is almost surely a typo.
const MAX_ITERATIONS = 10_000_000;

const USAGE = `usage: pgwarden users add <name> [--file <path>] [--password-stdin] [--iterations N]
       pgwarden users list [--file <path>]

  --file <path>      users file (default ${DEFAULT_USERS_FILE})
  --password-stdin   read the password from the first line of stdin instead of prompting
  --iterations N     PBKDF2 iterations for the new verifier, ${MIN_ITERATIONS}..${MAX_ITERATIONS} (default ${SCRAM_DEFAULT_ITERATIONS})
`;

interface Flags {
  readonly positionals: string[];
  readonly file: string;
  readonly passwordStdin: boolean;
  readonly iterations: number;
  readonly help: boolean;
}

type FlagName = "--file" | "--password-stdin" | "--iterations";

/** Parses `args` allowing only `allowed` flags; a string is the usage error. */
const parseFlags = (
  args: readonly string[],
  allowed: readonly FlagName[],
  command: string,
): Flags | string => {
  const positionals: string[] = [];
  let file = DEFAULT_USERS_FILE;
  let passwordStdin = false;
  let iterations = SCRAM_DEFAULT_ITERATIONS;
  let help = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (!arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg : arg.slice(0, eq);
    if (!(allowed as readonly string[]).includes(name)) return `unknown option ${name} for '${command}'`;
    const flag = name as FlagName;
    if (flag === "--password-stdin") {
      if (eq >= 0) return "--password-stdin takes no value";
      passwordStdin = true;
      continue;
    }
    const value = eq >= 0 ? arg.slice(eq + 1) : args[++i];
    if (value === undefined || value === "") return `${flag} needs a value`;
    if (flag === "--file") file = value;
    else {
      if (!/^[0-9]+$/.test(value) || Number(value) < MIN_ITERATIONS || Number(value) > MAX_ITERATIONS) {
        return `--iterations must be an integer from ${MIN_ITERATIONS} to ${MAX_ITERATIONS}`;
      }
      iterations = Number(value);
    }
  }
  return { positionals, file, passwordStdin, iterations, help };
};

type LineResult =
  | { readonly kind: "line"; readonly bytes: Buffer }
  | { readonly kind: "too-long" }
  | { readonly kind: "eof" }
  | { readonly kind: "interrupt" }
  | { readonly kind: "error"; readonly message: string };

/**
 * Reads lines of bytes from a stream. With `raw` (a terminal with echo off) it also does the
 * line editing the terminal no longer does: backspace, Ctrl-U, Ctrl-C, Ctrl-D.
 */
const createLineReader = (stream: NodeJS.ReadableStream, raw: boolean) => {
  const ready: LineResult[] = [];
  let current: number[] = [];
  let tooLong = false;
  let finished: LineResult | undefined;
  let wake: (() => void) | undefined;

  const finishLine = (result?: LineResult): void => {
    ready.push(result ?? (tooLong ? { kind: "too-long" } : { kind: "line", bytes: Buffer.from(current) }));
    current.fill(0);
    current = [];
    tooLong = false;
  };
  // Terminal escape sequences (arrow keys…) are skipped: ESC [ params final, ESC O x, or ESC x.
  let inEscape: "none" | "esc" | "csi" | "ss3" = "none";
  const onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
    for (const b of bytes) {
      if (inEscape !== "none") {
        if (inEscape === "esc") inEscape = b === 0x5b ? "csi" : b === 0x4f ? "ss3" : "none";
        else if (inEscape === "ss3" || (b >= 0x40 && b <= 0x7e)) inEscape = "none";
      } else if (b === 0x0a || (raw && b === 0x0d)) {
        if (!raw && current.at(-1) === 0x0d) current.pop();
        finishLine();
      } else if (raw && b < 0x20) {
        if (b === 0x03) finishLine({ kind: "interrupt" });
        else if (b === 0x04 && current.length === 0) finishLine({ kind: "eof" });
        else if (b === 0x15) current = [];
        else if (b === 0x08) popChar();
        else if (b === 0x1b) inEscape = "esc";
      } else if (raw && b === 0x7f) popChar();
      else if (current.length < MAX_PASSWORD_BYTES) current.push(b);
      else tooLong = true;
    }
    wake?.();
  };
  // Backspace removes one UTF-8 character: its continuation bytes, then its lead byte.
  const popChar = (): void => {
    while (current.length > 0 && ((current.at(-1) ?? 0) & 0xc0) === 0x80) current.pop();
    current.pop();
  };
  const onEnd = (): void => {
    if (current.length > 0 || tooLong) finishLine();
    finished = { kind: "eof" };
    wake?.();
  };
  const onError = (e: Error): void => {
    finished = { kind: "error", message: e.message };
    wake?.();
  };
  stream.on("data", onData);
  stream.on("end", onEnd);
  stream.on("error", onError);

  const next = async (): Promise<LineResult> => {
    while (ready.length === 0 && finished === undefined) {
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = undefined;
    }
    return ready.shift() ?? finished ?? { kind: "eof" };
  };
  const close = (): void => {
    stream.removeListener("data", onData);
    stream.removeListener("end", onEnd);
    stream.removeListener("error", onError);
    stream.pause();
    current.fill(0);
  };
  return { next, close };
};

type TtyStream = NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };

/** The password bytes, or a message saying why there are none. */
const checkPassword = (result: LineResult): Buffer | string => {
  switch (result.kind) {
    case "line":
      if (result.bytes.length === 0) return "the password is empty";
      if (result.bytes.includes(0)) return "the password contains a NUL byte";
      return result.bytes;
    case "too-long":
      return `the password is longer than ${MAX_PASSWORD_BYTES} bytes`;
    case "eof":
      return "no password given (end of input)";
    case "interrupt":
      return "interrupted";
    case "error":
      return `cannot read the password: ${result.message}`;
  }
};

const readPasswordLine = async (stdin: NodeJS.ReadableStream): Promise<Buffer | string> => {
  const reader = createLineReader(stdin, false);
  try {
    return checkPassword(await reader.next());
  } finally {
    reader.close();
  }
};

const promptPassword = async (stdin: TtyStream, stderr: NodeJS.WritableStream, name: string) => {
  if (typeof stdin.setRawMode !== "function") return "cannot turn off terminal echo to read the password";
  stdin.setRawMode(true);
  const reader = createLineReader(stdin, true);
  try {
    stderr.write(`Password for ${JSON.stringify(name)}: `);
    const first = checkPassword(await reader.next());
    stderr.write("\n");
    if (typeof first === "string") return first;
    stderr.write("Repeat password: ");
    const second = checkPassword(await reader.next());
    stderr.write("\n");
    if (typeof second === "string") return second;
    const same = first.equals(second);
    second.fill(0);
    if (!same) {
      first.fill(0);
      return "the passwords do not match";
    }
    return first;
  } finally {
    reader.close();
    stdin.setRawMode(false);
  }
};

const addUser = async (flags: Flags, io: UsersCommandIo, usage: (m: string) => number): Promise<number> => {
  const fail = (message: string): number => {
    io.stderr.write(`pgwarden users add: ${message}\n`);
    return 1;
  };
  const [name, ...extra] = flags.positionals;
  if (name === undefined) return usage("missing <name>");
  if (extra.length > 0) return usage(`unexpected argument ${JSON.stringify(extra[0])}`);
  const nameProblem = checkUserName(name);
  if (nameProblem !== undefined) return usage(`invalid <name>: ${nameProblem}`);
  const stdin = io.stdin as TtyStream;
  if (!flags.passwordStdin && stdin.isTTY !== true) {
    return usage("stdin is not a terminal: pass the password on stdin with --password-stdin");
  }

  // Refuse a broken file before asking for a password.
  const before = await readUsersFileText(flags.file);
  if (isPgwardenError(before)) return fail(before.message);
  const parsedBefore = parseUsersFile(before ?? "");
  if (isPgwardenError(parsedBefore)) return fail(`${flags.file}: ${parsedBefore.message}`);

  const password = flags.passwordStdin
    ? await readPasswordLine(io.stdin)
    : await promptPassword(stdin, io.stderr, name);
  if (typeof password === "string") return fail(password);
  const verifier = createScramVerifier(password, { iterations: flags.iterations });
  password.fill(0);

  // Re-read: the file may have changed while the password was typed.
  const current = await readUsersFileText(flags.file);
  if (isPgwardenError(current)) return fail(current.message);
  const currentUsers = parseUsersFile(current ?? "");
  const replaced = !isPgwardenError(currentUsers) && currentUsers.has(name);
  const updated = upsertUser(current ?? "", name, verifier);
  if (isPgwardenError(updated)) return fail(`${flags.file}: ${updated.message}`);
  const written = await writeUsersFileAtomic(flags.file, updated);
  if (written !== undefined) return fail(written.message);
  io.stdout.write(
    replaced
      ? `updated the password of user ${JSON.stringify(name)} in ${flags.file}\n`
      : `added user ${JSON.stringify(name)} to ${flags.file}\n`,
  );
  return 0;
};

const listUsers = async (flags: Flags, io: UsersCommandIo, usage: (m: string) => number): Promise<number> => {
  const [extra] = flags.positionals;
  if (extra !== undefined) return usage(`unexpected argument ${JSON.stringify(extra)}`);
  const users = await loadUsersFile(flags.file);
  if (isPgwardenError(users)) {
    io.stderr.write(`pgwarden users list: ${users.message}\n`);
    return 1;
  }
  // Names and iteration counts only: salts and keys stay in the file.
  for (const [name, { iterations }] of users) {
    io.stdout.write(`${name}\tSCRAM-SHA-256 iterations=${iterations}\n`);
  }
  return 0;
};

/**
 * `pgwarden users add|list …`; `argv` is what follows `users`. Returns the exit code: 0 done,
 * 2 bad usage (the message names the bad flag or argument), 1 any other failure. Never prints
 * the password or a verifier's salt and keys.
 *
 * @example await runUsersCommand(["add", "alice", "--password-stdin"], { stdin, stdout, stderr })
 */
export async function runUsersCommand(argv: string[], io: UsersCommandIo): Promise<number> {
  const [subcommand, ...rest] = argv;
  const usage = (message: string): number => {
    io.stderr.write(`pgwarden users: ${message}\n${USAGE}`);
    return 2;
  };
  if (subcommand === "-h" || subcommand === "--help" || subcommand === "help") {
    io.stdout.write(USAGE);
    return 0;
  }
  if (subcommand !== "add" && subcommand !== "list") {
    return usage(
      subcommand === undefined ? "missing subcommand" : `unknown subcommand ${JSON.stringify(subcommand)}`,
    );
  }
  const allowed: readonly FlagName[] =
    subcommand === "add" ? ["--file", "--password-stdin", "--iterations"] : ["--file"];
  const flags = parseFlags(rest, allowed, `users ${subcommand}`);
  if (typeof flags === "string") return usage(flags);
  if (flags.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  return subcommand === "add" ? addUser(flags, io, usage) : listUsers(flags, io, usage);
}
