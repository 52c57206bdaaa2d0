import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import type { CertPair } from "../support/certs.ts";

/** Debian's PostgreSQL server binaries (the `postgresql` package), newest major first. */
export const debianPostgresBin = (): string | undefined => {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const majors = readdirSync(root)
    .filter((v) => existsSync(join(root, v, "bin", "postgres")))
    .sort((a, b) => Number(b) - Number(a));
  return majors[0] === undefined ? undefined : join(root, majors[0], "bin");
};

export interface TlsPostgres {
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly major: number;
  stop(): Promise<void>;
}

const asRoot = process.getuid?.() === 0;

/** PostgreSQL refuses to run as root: run as the `postgres` OS user then (Debian creates it). */
const asPostgres = (bin: string, args: string[]): [string, string[]] =>
  asRoot ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, args];

const ownedByPostgres = (path: string, mode: number) => {
  chmodSync(path, mode);
  if (!asRoot) return;
  const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
  const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
  chownSync(path, uid, gid);
};

let template: string | undefined;

/** initdb once per test file; each server gets a copy of the cluster (initdb is the slow part). */
const initdbTemplate = (bin: string, password: string): string => {
  if (template !== undefined) return template;
  const dir = mkdtempSync(join(tmpdir(), "pgwarden-pg-template-"));
  ownedByPostgres(dir, 0o700);
  const pwfile = join(dir, "pw");
  writeFileSync(pwfile, password);
  ownedByPostgres(pwfile, 0o600);
  const [cmd, args] = asPostgres(join(bin, "initdb"), [
    ...["-D", join(dir, "data"), "-U", "postgres", "-A", "scram-sha-256", `--pwfile=${pwfile}`],
    ...["--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"],
  ]);
  execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  template = dir;
  return dir;
};

/** Extra server settings: `postgresql.conf` lines, files copied into the data directory, the hba method. */
export interface TlsPostgresOptions {
  /** Lines such as `ssl_min_protocol_version = 'TLSv1.2'`. */
  readonly settings?: readonly string[];
  /** Files copied into the data directory under the given name (a CA bundle, a CRL). */
  readonly files?: Readonly<Record<string, string>>;
  /** The `hostssl` line's method and options (default `scram-sha-256`). */
  readonly hba?: string;
}

/**
 * A throwaway Debian PostgreSQL on loopback. With `tls` it has ssl=on with that certificate and
 * only `hostssl` is allowed; without, ssl=off (it answers SSLRequest with N).
 */
export const startTlsPostgres = async (
  tls: CertPair | undefined,
  options: TlsPostgresOptions = {},
): Promise<TlsPostgres> => {
  const bin = debianPostgresBin();
  if (bin === undefined)
    throw new Error("Debian PostgreSQL server not installed (apt-get install postgresql)");
  const password = "pg15-superuser-password";
  const base = initdbTemplate(bin, password);
  const dir = mkdtempSync(join(tmpdir(), "pgwarden-pg-"));
  ownedByPostgres(dir, 0o700);
  const data = join(dir, "data");
  execFileSync("cp", ["-a", join(base, "data"), data]);
  const port = await freePort();
  const settings = [
    "listen_addresses = '127.0.0.1'",
    `port = ${port}`,
    `unix_socket_directories = '${dir}'`,
    "fsync = off",
    `ssl = ${tls === undefined ? "off" : "on"}`,
  ];
  if (tls !== undefined) {
    copyFileSync(tls.cert, join(data, "server.crt"));
    copyFileSync(tls.key, join(data, "server.key"));
    ownedByPostgres(join(data, "server.crt"), 0o644);
    ownedByPostgres(join(data, "server.key"), 0o600);
    settings.push("ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'");
  }
  for (const [name, from] of Object.entries(options.files ?? {})) {
    copyFileSync(from, join(data, name));
    ownedByPostgres(join(data, name), 0o600);
  }
  settings.push(...(options.settings ?? []));
  writeFileSync(join(data, "postgresql.auto.conf"), `${settings.join("\n")}\n`);
  writeFileSync(
    join(data, "pg_hba.conf"),
    `${tls === undefined ? "host" : "hostssl"} all all 127.0.0.1/32 ${options.hba ?? "scram-sha-256"}\n`,
  );
  for (const f of ["postgresql.auto.conf", "pg_hba.conf"]) ownedByPostgres(join(data, f), 0o600);

  const [cmd, args] = asPostgres(join(bin, "postgres"), ["-D", data]);
  const child: ChildProcess = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  const deadline = Date.now() + 30_000;
  while (!log.includes("ready to accept connections")) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`PostgreSQL did not start:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const major = Number(/(\d+)\/bin$/.exec(bin)?.[1] ?? 0);

  const stop = async () => {
    // SIGINT to the postmaster itself (runuser may not forward it): fast shutdown.
    const pidFile = join(data, "postmaster.pid");
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8").split("\n")[0]) : undefined;
    if (pid !== undefined && pid > 0) {
      try {
        process.kill(pid, "SIGINT");
      } catch {}
    }
    const exited = new Promise<void>((r) => (child.exitCode !== null ? r() : child.once("exit", () => r())));
    const timeout = new Promise<void>((r) => setTimeout(r, 10_000).unref());
    await Promise.race([exited, timeout]);
    if (child.exitCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  return { port, user: "postgres", password, major, stop };
};

/** Removes the initdb template (call once at the end of the file). */
export const removeTemplate = (): void => {
  if (template !== undefined) rmSync(template, { recursive: true, force: true });
  template = undefined;
};
