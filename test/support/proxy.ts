import { Writable } from "node:stream";
import { deriveScramVerifier, type ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import type { Transition } from "../../src/machines/MachineRunner.ts";
import { decodeConfig } from "../../src/runtime/config.ts";
import type { ProxyEvent } from "../../src/runtime/EventSink.ts";
import { createLogger } from "../../src/runtime/logger.ts";
import { type RunningServer, startServer } from "../../src/runtime/Server.ts";
import { postgresInfo } from "./postgres.ts";

export interface TestProxy {
  readonly server: RunningServer;
  readonly port: number;
  readonly transitions: Transition[];
  /** Every event the proxy emitted except transitions (those are in `transitions`). */
  readonly events: ProxyEvent[];
  /** Log lines as JSON objects, for assertions about what was (not) logged. */
  readonly logs: Record<string, unknown>[];
  /** Connection options for pg/postgres.js through the proxy (the default identity has a password). */
  readonly connection: (user?: string) => {
    host: string;
    port: number;
    user: string;
    password: string;
    database: string;
  };
  close(): Promise<void>;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

/** The default test identity and its password, as in `connection()`. */
export const TEST_USER = "postgres";
export const TEST_PASSWORD = "test-client-password";
const defaultUsers: ReadonlyMap<string, ScramVerifier> = new Map([
  [TEST_USER, deriveScramVerifier(TEST_PASSWORD, { salt: Buffer.alloc(16, 7) })],
]);

/**
 * Starts pgwarden in-process in front of the test PostgreSQL, as a deployment would run it:
 * SCRAM on the client leg (identity `postgres`, TEST_PASSWORD; passwords over plaintext explicitly
 * allowed, as `auth.allowPasswordOverPlaintext` is false by default), upstream as the non-superuser
 * role `pgw_app`, every database granted; any free port. Tests that speak raw bytes pass
 * `auth: { method: "trust" }`.
 */
export const startProxy = async (
  overrides: Record<string, DeepPartial<Record<string, unknown>> | unknown> = {},
  users: ReadonlyMap<string, ScramVerifier> = defaultUsers,
): Promise<TestProxy> => {
  const pg = postgresInfo();
  const o = overrides as Record<string, Record<string, unknown> | undefined>;
  const input = {
    ...overrides,
    listen: { host: "127.0.0.1", port: 0, ...o.listen },
    upstream: { host: pg.host, port: pg.port, user: "pgw_app", password: pg.rolePassword, ...o.upstream },
    access: { grants: [{ identity: "*", databases: ["*"] }], ...o.access },
    // Most tests speak SCRAM over a plaintext client leg; production defaults refuse that.
    auth: { method: "scram-sha-256", allowPasswordOverPlaintext: true, ...o.auth },
    limits: { ...o.limits },
    shutdown: { drainTimeoutMs: 2000, ...o.shutdown },
    log: { level: "debug", ...o.log },
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
  const events: ProxyEvent[] = [];
  const server = await startServer({
    config,
    log: createLogger(config.log.level, sink),
    users: () => users,
    onTransition: (t) => transitions.push(t),
    events: {
      emit: (e) => {
        if (e.kind !== "transition") events.push(e);
      },
    },
  });
  return {
    server,
    port: server.port,
    transitions,
    events,
    logs,
    connection: (user = TEST_USER) => ({
      host: "127.0.0.1",
      port: server.port,
      user,
      password: TEST_PASSWORD,
      database: "postgres",
    }),
    close: () => server.stop(),
  };
};
