import { Writable } from "node:stream";
import type { ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import type { Transition } from "../../src/machines/MachineRunner.ts";
import { decodeConfig } from "../../src/runtime/config.ts";
import { createLogger } from "../../src/runtime/logger.ts";
import { type RunningServer, startServer } from "../../src/runtime/Server.ts";
import { postgresInfo } from "./postgres.ts";

export interface TestProxy {
  readonly server: RunningServer;
  readonly port: number;
  readonly transitions: Transition[];
  /** Log lines as JSON objects, for assertions about what was (not) logged. */
  readonly logs: Record<string, unknown>[];
  /** Connection options for pg/postgres.js through the proxy. */
  readonly connection: (user?: string) => { host: string; port: number; user: string; database: string };
  close(): Promise<void>;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

/**
 * Starts pgwarden in-process in front of the test PostgreSQL. Defaults: trust for clients,
 * upstream as the superuser with its password, any free port.
 */
export const startProxy = async (
  overrides: Record<string, DeepPartial<Record<string, unknown>>> = {},
  users: ReadonlyMap<string, ScramVerifier> = new Map(),
): Promise<TestProxy> => {
  const pg = postgresInfo();
  const input = {
    listen: { host: "127.0.0.1", port: 0, ...overrides.listen },
    upstream: { host: pg.host, port: pg.port, password: pg.password, ...overrides.upstream },
    auth: { method: "trust", ...overrides.auth },
    limits: { ...overrides.limits },
    shutdown: { drainTimeoutMs: 2000, ...overrides.shutdown },
    log: { level: "debug", ...overrides.log },
  };
  // A key set to undefined in overrides means "leave it out".
  const config = decodeConfig(JSON.parse(JSON.stringify(input)));
  if (isPgwardenError(config)) throw new Error(config.message);
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split("\n"))
        if (line !== "") logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const transitions: Transition[] = [];
  const server = await startServer({
    config,
    log: createLogger(config.log.level, sink),
    users: () => users,
    onTransition: (t) => transitions.push(t),
  });
  return {
    server,
    port: server.port,
    transitions,
    logs,
    connection: (user = "postgres") => ({ host: "127.0.0.1", port: server.port, user, database: "postgres" }),
    close: () => server.stop(),
  };
};
