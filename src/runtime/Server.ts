import { createHmac, randomBytes } from "node:crypto";
import { createServer, type Server as NetServer, type Socket } from "node:net";
import { Deferred, Effect, FiberMap, type Scope } from "effect";
import type { Logger } from "pino";
import { connectUpstream, sendCancel } from "../adapters/upstream.ts";
import type { ScramVerifier } from "../auth/scramVerifier.ts";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import type { TransitionListener } from "../machines/MachineRunner.ts";
import { encodeError } from "../protocol/backend.ts";
import { CancelRegistry } from "./CancelRegistry.ts";
import type { PgwardenConfig } from "./config.ts";
import { Session, type SessionDeps } from "./Session.ts";

export interface ServerOptions {
  readonly config: PgwardenConfig;
  readonly log: Logger;
  readonly users: () => ReadonlyMap<string, ScramVerifier>;
  readonly onTransition?: TransitionListener;
}

/** A running proxy, as the CLI and tests hold it. */
export interface RunningServer {
  readonly host: string;
  readonly port: number;
  /** Live sessions by connection id. */
  readonly sessions: ReadonlyMap<string, Session>;
  readonly cancels: CancelRegistry;
  /** Stops accepting, lets sessions finish within the drain timeout, then ends them with 57P01. */
  drain(): Promise<void>;
  /** Ends every session now (57P01) and stops. */
  stop(): Promise<void>;
  /** Settles when the server has stopped, however that happened. */
  readonly stopped: Promise<void>;
}

const listen = (host: string, port: number): Effect.Effect<NetServer, PgwardenError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<NetServer, PgwardenError>((resume) => {
      const server = createServer({ noDelay: true, keepAlive: true, pauseOnConnect: false });
      server.once("error", (e) =>
        resume(
          Effect.fail(
            pgwardenError(
              "PGW_CONFIG",
              SqlState.internalError,
              `cannot listen on ${host}:${port}: ${e.message}`,
            ),
          ),
        ),
      );
      server.listen({ host, port, backlog: 4096 }, () => {
        server.removeAllListeners("error");
        resume(Effect.succeed(server));
      });
    }),
    // close() only stops accepting here: sessions end through their fibers, not through the listener.
    (server) => Effect.sync(() => server.listening && server.close()),
  );

/** Waits for a session to end; interrupting it ends the session with 57P01 first. */
const superviseSession = (session: Session, socket: Socket): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    void session.closed.then(() => resume(Effect.void));
    return Effect.promise(async () => {
      session.shutdown();
      await Promise.race([session.closed, new Promise((r) => setTimeout(r, 1000).unref())]);
      socket.destroy();
    });
  });

/** At debug level every transition is also a log line; otherwise logging costs nothing here. */
const withDebugLog = (
  log: Logger,
  listener: TransitionListener | undefined,
): TransitionListener | undefined => {
  if (!log.isLevelEnabled("debug")) return listener;
  return (t) => {
    log.debug({ conn: t.connectionId, from: t.from, to: t.to, cause: t.cause }, "transition");
    listener?.(t);
  };
};

/**
 * The key for unknown users' mock SCRAM salts must survive restarts, or a changing salt would
 * give them away. Derived (with its own label) from the upstream password when there is one;
 * random per process otherwise.
 */
const mockSecretFor = (config: PgwardenConfig): Buffer =>
  config.upstream.password === undefined
    ? randomBytes(32)
    : createHmac("sha256", config.upstream.password).update("pgwarden mock SCRAM salt key v1").digest();

let counter = 0;
/** Connection ids: unique within the process, ordered, short. */
const nextId = (): string => `c${(++counter).toString(36)}`;

/**
 * The proxy as an Effect program: a scoped listener, one supervised fiber per connection in a
 * FiberMap keyed by connection id, and a drain on request.
 */
const program = (
  options: ServerOptions,
  signals: { drain: Deferred.Deferred<void>; stop: Deferred.Deferred<void> },
  onListening: (server: NetServer, sessions: Map<string, Session>, cancels: CancelRegistry) => void,
) =>
  Effect.gen(function* () {
    const { config, log } = options;
    const fibers = yield* FiberMap.make<string>();
    const run = yield* FiberMap.runtime(fibers)<never>();
    const sessions = new Map<string, Session>();
    const cancels = new CancelRegistry();
    const deps: SessionDeps = {
      config,
      users: options.users,
      mockSecret: mockSecretFor(config),
      cancels,
      log,
      onTransition: withDebugLog(log, options.onTransition),
      connectUpstream,
      sendCancel,
    };
    const server = yield* listen(config.listen.host, config.listen.port);
    server.on("connection", (socket: Socket) => {
      if (sessions.size >= config.limits.maxClientConnections) {
        log.warn({ limit: config.limits.maxClientConnections }, "connection refused: too many clients");
        socket.on("error", () => socket.destroy());
        setTimeout(() => socket.destroy(), 1000).unref();
        socket.end(
          encodeError({
            severity: "FATAL",
            code: SqlState.tooManyConnections,
            message: "sorry, too many clients already",
          }),
        );
        return;
      }
      const id = nextId();
      const session = new Session(id, socket, deps);
      sessions.set(id, session);
      void session.closed.then(() => sessions.delete(id));
      session.start();
      run(id, superviseSession(session, socket));
    });
    onListening(server, sessions, cancels);
    const address = server.address();
    log.info({ address }, "listening");

    const first = yield* Effect.raceFirst(
      Deferred.await(signals.drain).pipe(Effect.as("drain" as const)),
      Deferred.await(signals.stop).pipe(Effect.as("stop" as const)),
    );
    server.close();
    if (first === "drain" && sessions.size > 0) {
      log.info({ sessions: sessions.size, timeoutMs: config.shutdown.drainTimeoutMs }, "draining");
      yield* Effect.raceFirst(
        FiberMap.awaitEmpty(fibers).pipe(Effect.timeoutOption(config.shutdown.drainTimeoutMs)),
        Deferred.await(signals.stop),
      );
    }
    if (sessions.size > 0) log.info({ sessions: sessions.size }, "ending remaining sessions");
    yield* FiberMap.clear(fibers);
    log.info("stopped");
  });

/** Starts the proxy; resolves once it listens. */
export const startServer = async (options: ServerOptions): Promise<RunningServer> => {
  const drain = Deferred.makeUnsafe<void>();
  const stop = Deferred.makeUnsafe<void>();
  let ready!: (v: { server: NetServer; sessions: Map<string, Session>; cancels: CancelRegistry }) => void;
  let failed!: (e: unknown) => void;
  const listening = new Promise<{
    server: NetServer;
    sessions: Map<string, Session>;
    cancels: CancelRegistry;
  }>((res, rej) => {
    ready = res;
    failed = rej;
  });
  const fiber = Effect.runFork(
    Effect.scoped(
      program(options, { drain, stop }, (server, sessions, cancels) => ready({ server, sessions, cancels })),
    ),
  );
  const stopped = new Promise<void>((resolve) => {
    fiber.addObserver((exit) => {
      if (exit._tag === "Failure") failed(new Error(String(exit.cause)));
      resolve();
    });
  });
  const { server, sessions, cancels } = await listening;
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("listener has no TCP address");
  return {
    host: addr.address,
    port: addr.port,
    sessions,
    cancels,
    stopped,
    drain: async () => {
      Deferred.doneUnsafe(drain, Effect.void);
      await stopped;
    },
    stop: async () => {
      Deferred.doneUnsafe(stop, Effect.void);
      await stopped;
    },
  };
};
