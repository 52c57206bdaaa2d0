import { createHmac, randomBytes } from "node:crypto";
import { createServer, type Server as NetServer, type Socket } from "node:net";
import * as Clock from "effect/Clock";
import * as Deferred from "effect/Deferred";
import * as Effect from "effect/Effect";
import * as FiberSet from "effect/FiberSet";
import * as Redacted from "effect/Redacted";
import type * as Scope from "effect/Scope";
import type { Logger } from "pino";
import {
  clientLegContextOptions,
  requestsClientCertificate,
  upstreamLegContextOptions,
} from "../adapters/tls/policy.ts";
import { createReloadableContext, type ReloadableContext } from "../adapters/tls/reloadableContext.ts";
import { connectUpstream, sendCancel, UpstreamCredentials } from "../adapters/upstream.ts";
import { SCRAM_DEFAULT_ITERATIONS, type ScramVerifier } from "../auth/scramVerifier.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import type { TransitionListener } from "../machines/MachineRunner.ts";
import { type CompiledAccess, compileAccess } from "../policy/accessRules.ts";
import { createSessionCounter } from "../policy/sessionLimits.ts";
import { ServerPool } from "../pool/ServerPool.ts";
import { encodeError } from "../protocol/backend.ts";
import { pgwardenVersion } from "../version.ts";
import { adminSource } from "./adminSource.ts";
import { CancelRegistry } from "./CancelRegistry.ts";
import { type Admission, ClientConnection, type ConnectionDeps } from "./ClientConnection.ts";
import type { PgwardenConfig } from "./config.ts";
import { Deadlines } from "./Deadlines.ts";
import { discardEvents, type EventSink } from "./EventSink.ts";
import type { FipsStatus } from "./fips.ts";
import { poolLogin, type ServerConnectionDeps } from "./ServerConnection.ts";
import { Cancels, Config, Events, Users } from "./services.ts";

export interface ServerOptions {
  readonly config: PgwardenConfig;
  readonly log: Logger;
  readonly users: () => ReadonlyMap<string, ScramVerifier>;
  readonly onTransition?: TransitionListener;
  readonly events?: EventSink;
  /** The FIPS self-test that passed before start (fips: true): logged and emitted as an event. */
  readonly fipsStatus?: FipsStatus;
}

/** How the program ended: `ok` false when it failed rather than being drained or stopped. */
export interface StopResult {
  readonly ok: boolean;
  readonly cause?: string;
}

/** A running proxy, as the CLI and tests hold it. */
export interface RunningServer {
  readonly host: string;
  readonly port: number;
  /** Live client connections by connection id. */
  readonly sessions: ReadonlyMap<string, ClientConnection>;
  readonly cancels: CancelRegistry;
  /** Server connections kept for reuse. */
  readonly pool: ServerPool;
  /** Stops accepting, lets sessions finish within the drain timeout, then ends them with 57P01. */
  drain(): Promise<void>;
  /** Ends every session now (57P01) and stops. */
  stop(): Promise<void>;
  /** Settles when the server has stopped, however that happened. */
  readonly stopped: Promise<StopResult>;
  /**
   * SIGHUP: re-reads certificates and keys and, given the re-read configuration, recompiles the
   * access rules, groups and certificate mapping. What fails to load leaves the running one in
   * force; sessions already open keep what they were admitted under.
   */
  reload(next?: PgwardenConfig): ReloadReport;
}

/** What a reload did, per part; absent parts are not configured. */
export interface ReloadReport {
  readonly tls?: { readonly ok: boolean; readonly reason?: string };
  readonly upstreamTls?: { readonly ok: boolean; readonly reason?: string };
  readonly access?: { readonly ok: boolean; readonly reason?: string };
  readonly sessions?: { readonly ok: boolean };
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
    // close() only stops accepting here: the server ends open connections itself (endSessions).
    (server) => Effect.sync(() => server.listening && server.close()),
  );

/**
 * One connection's fiber: suspended until the connection has closed, which then leaves the live
 * connections and is destroyed (ClientConnection's close, `deps.live`). The fiber's resume is the
 * connection's closed listener as it is, and the fiber registers no cancellation of its own: an
 * idle connection holds only what its fiber is suspended on. The server ends the connections
 * still open when it stops (`endSessions`), before it interrupts their fibers.
 */
const superviseConnection = (conn: ClientConnection): Effect.Effect<void> =>
  Effect.callback<void>((resume) => conn.whenClosed(resume, Effect.void));

/**
 * Ends every open connection with 57P01, gives them the linger to close, then destroys what is
 * left: at a stop or drain's end, and when the server's scope closes for any other reason.
 */
const endSessions = (
  sessions: ReadonlyMap<string, ClientConnection>,
  lingerMs: number,
): Effect.Effect<void> =>
  Effect.promise(async () => {
    const open = [...sessions.values()];
    if (open.length === 0) return;
    for (const c of open) c.shutdown();
    await Promise.race([
      Promise.all(open.map((c) => c.closed)),
      new Promise((r) => setTimeout(r, lingerMs + 500).unref()),
    ]);
    for (const c of open) c.destroy();
  });

/** At debug level every transition is also a log line; otherwise logging costs nothing here. */
const withDebugLog = (
  log: Logger,
  events: EventSink,
  listener: TransitionListener | undefined,
): TransitionListener | undefined => {
  const debug = log.isLevelEnabled("debug");
  if (!debug && events === discardEvents) return listener;
  return (t) => {
    if (debug)
      log.debug(
        { conn: t.connectionId, machine: t.machine, from: t.from, to: t.to, cause: t.cause },
        "transition",
      );
    if (events.transition !== undefined) events.transition(t);
    else events.emit({ kind: "transition", ...t });
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
    : createHmac("sha256", Redacted.value(config.upstream.password))
        .update("pgwarden mock SCRAM salt key v1")
        .digest();

/** The iteration count most of the users file's verifiers use: what unknown users are shown. */
const commonIterations = (users: ReadonlyMap<string, ScramVerifier>): number => {
  const counts = new Map<number, number>();
  let best = SCRAM_DEFAULT_ITERATIONS;
  let bestCount = 0;
  for (const v of users.values()) {
    const n = (counts.get(v.iterations) ?? 0) + 1;
    counts.set(v.iterations, n);
    if (n > bestCount || (n === bestCount && v.iterations > best)) {
      best = v.iterations;
      bestCount = n;
    }
  }
  return best;
};

/** Memoises a derived value per users map: recomputed only when the file was reloaded. */
const perUsers = <A>(
  users: () => ReadonlyMap<string, ScramVerifier>,
  f: (u: ReadonlyMap<string, ScramVerifier>) => A,
) => {
  let seen: ReadonlyMap<string, ScramVerifier> | undefined;
  let value: A;
  return (): A => {
    const u = users();
    if (u !== seen) {
      seen = u;
      value = f(u);
    }
    return value;
  };
};

let counter = 0;
/** Connection ids: unique within the process, ordered, short. */
const nextId = (): string => `c${(++counter).toString(36)}`;

/** Client and cancel slots, counted apart: a full server still serves cancels. */
const admission = (max: number, maxCancels: number): Admission & { clients: number; cancels: number } => {
  const a = {
    clients: 0,
    cancels: 0,
    admitClient(): boolean {
      if (a.clients >= max) return false;
      a.clients++;
      return true;
    },
    releaseClient(): void {
      a.clients--;
    },
    admitCancel(): boolean {
      if (a.cancels >= maxCancels) return false;
      a.cancels++;
      return true;
    },
    releaseCancel(): void {
      a.cancels--;
    },
  };
  return a;
};

interface Listening {
  server: NetServer;
  sessions: Map<string, ClientConnection>;
  cancels: CancelRegistry;
  pool: ServerPool;
  reload: (next?: PgwardenConfig) => ReloadReport;
}

/** The client leg's context, built once at start (a bad certificate stops the start) and on reload. */
const clientTlsContext = (config: PgwardenConfig): ReloadableContext | PgwardenError | undefined =>
  config.tls.mode === "disable"
    ? undefined
    : createReloadableContext(() => clientLegContextOptions(config.tls));

/**
 * The proxy as an Effect program: a scoped listener, one supervised fiber per connection in a
 * FiberSet, and a drain on request.
 */
const program = (
  options: Pick<ServerOptions, "log" | "onTransition" | "fipsStatus">,
  signals: { drain: Deferred.Deferred<void>; stop: Deferred.Deferred<void> },
  onListening: (l: Listening) => void,
) =>
  Effect.gen(function* () {
    const { log } = options;
    const config = yield* Config;
    const users = yield* Users;
    const cancels = yield* Cancels;
    const events = yield* Events;
    // A set, not a map by id: the server finds connections through `sessions`, and a set holds
    // one entry per fiber where a map holds two.
    const fibers = yield* FiberSet.make();
    const run = yield* FiberSet.runtime(fibers)<never>();
    const forkTimer = yield* FiberSet.makeRuntime<never>();
    const clock = yield* Clock.Clock;
    const sessions = new Map<string, ClientConnection>();
    const limits = config.limits;
    const slots = admission(limits.maxClientConnections, limits.maxCancelConnections);
    const pc = config.pool;
    const pooledModes =
      pc.mode !== "session" || pc.overrides.some((o) => o.mode !== undefined && o.mode !== "session");
    // Pooled modes read session effects with PostgreSQL's own grammar: loaded once, before serving.
    const parser = pooledModes
      ? yield* Effect.promise(() => import("../sql/parser.ts").then((m) => m.loadSqlParser()))
      : undefined;
    let loginDeps: ServerConnectionDeps | undefined;
    const pool = new ServerPool(
      {
        mode: pc.mode,
        size: pc.size,
        minIdle: pc.minIdle,
        reserveSize: pc.reserveSize,
        reserveAfterMs: pc.reserveAfterMs,
        maxClients: pc.maxClientsPerPool,
        queryWaitTimeoutMs: pc.queryWaitTimeoutMs,
        serverLifetimeMs: pc.serverLifetimeMs,
        serverIdleTimeoutMs: pc.serverIdleTimeoutMs,
        serverConnectTimeoutMs: pc.serverConnectTimeoutMs,
        serverCheckDelayMs: pc.serverCheckDelayMs,
        serverCheckQuery: pc.serverCheckQuery,
        resetQuery: pc.resetQuery,
        maxIdle: Math.min(pc.maxIdlePerKey, pc.size + pc.reserveSize),
        preparedPerServer: pc.preparedStatements.enabled ? pc.preparedStatements.perServerCapacity : 0,
      },
      pc.overrides,
      (p, settings) => poolLogin(loginDeps!, log, pc.serverConnectTimeoutMs)(p, settings),
    );
    // Pooled connections end with the program, however it ends.
    yield* Effect.addFinalizer(() => Effect.sync(() => pool.closeAll()));
    // Registered after the fibers' set and the pools, so it runs before both when the scope
    // closes, however it closes: clients get 57P01 while their server legs are still there.
    yield* Effect.addFinalizer(() => endSessions(sessions, limits.lingerMs));
    const { host, port, connectTimeoutMs } = config.upstream;
    const tlsContext = clientTlsContext(config);
    if (isPgwardenError(tlsContext)) return yield* Effect.fail(tlsContext);
    const upstreamTls = config.upstream.tls;
    const upstreamContext =
      upstreamTls.mode === "disable"
        ? undefined
        : createReloadableContext(() => upstreamLegContextOptions(upstreamTls));
    if (isPgwardenError(upstreamContext)) return yield* Effect.fail(upstreamContext);
    const compileRules = (c: PgwardenConfig) => compileAccess(c.access, { defaultMethod: c.auth.method });
    const compiled = compileRules(config);
    if (isPgwardenError(compiled)) return yield* Effect.fail(compiled);
    let access: CompiledAccess = compiled;
    const sessionCounter = createSessionCounter(config.sessions);
    let sessionTimers = config.sessions;
    const clientTls = config.tls;
    const deps: ConnectionDeps = {
      tls:
        tlsContext === undefined || clientTls.mode === "disable"
          ? undefined
          : {
              mode: clientTls.mode,
              context: () => tlsContext.current(),
              requestCert: requestsClientCertificate(clientTls),
              handshakeTimeoutMs: clientTls.handshakeTimeoutMs,
            },
      auth: config.auth,
      limits,
      startup: config.startup,
      access: () => access,
      live: sessions,
      sessions: { counter: sessionCounter, timers: () => sessionTimers },
      grants: {
        grants: config.access.grants,
        defaultRole: config.upstream.user,
        fallbackToClientUser: config.upstream.fallbackToClientUser,
      },
      target: {
        host,
        port,
        connectTimeoutMs,
        // MD5 is no approved algorithm: PostgreSQL asking for it is refused in FIPS mode.
        refuseMd5: config.fips,
        ...(upstreamContext === undefined || upstreamTls.mode === "disable"
          ? {}
          : {
              tls: {
                mode: upstreamTls.mode,
                context: () => upstreamContext.current(),
                ...(upstreamTls.servername === undefined ? {} : { servername: upstreamTls.servername }),
                direct: upstreamTls.direct,
                handshakeTimeoutMs: upstreamTls.handshakeTimeoutMs,
              },
            }),
      },
      credentials:
        config.upstream.password === undefined
          ? undefined
          : new UpstreamCredentials(Redacted.value(config.upstream.password)),
      users,
      mockIterations: perUsers(users, commonIterations),
      mockSecret: mockSecretFor(config),
      cancels,
      pool,
      admin: { config: config.admin, source: () => admin },
      pooling: {
        refusePins: pc.pinning.onSessionState === "refuse",
        idleInTransactionTimeoutMs: pc.idleInTransactionTimeoutMs,
        transactionTimeoutMs: pc.transactionTimeoutMs,
        parser,
      },
      admission: slots,
      deadlines: new Deadlines((e) => forkTimer(e), clock),
      events,
      log,
      onTransition: withDebugLog(log, events, options.onTransition),
      connectUpstream,
      sendCancel,
    };
    const admin = adminSource(pool, sessions, () => config, pgwardenVersion());
    loginDeps = {
      target: deps.target,
      credentials: deps.credentials,
      connectUpstream: deps.connectUpstream,
      sendCancel: deps.sendCancel,
      onTransition: deps.onTransition,
    };
    // Sockets still in their first packet are bounded too: every live one is a client, a cancel,
    // or one that will be either within auth.timeoutMs.
    const maxSockets = limits.maxClientConnections + limits.maxCancelConnections;
    const server = yield* listen(config.listen.host, config.listen.port);
    server.on("connection", (socket: Socket) => {
      if (sessions.size >= maxSockets) {
        log.warn({ limit: maxSockets }, "connection refused: too many connections");
        socket.on("error", () => socket.destroy());
        setTimeout(() => socket.destroy(), limits.lingerMs).unref();
        socket.end(
          encodeError({
            severity: "FATAL",
            code: SqlState.tooManyConnections,
            message: "sorry, too many clients already",
          }),
        );
        return;
      }
      const auditBlocked = events.blocked?.();
      if (auditBlocked !== undefined) {
        // AU-5 block: nobody new gets in while the audit trail cannot record what they do.
        const remote = `${socket.remoteAddress}:${socket.remotePort}`;
        log.warn({ remote, reason: auditBlocked }, "connection refused: audit trail unavailable");
        events.emit({ kind: "connectionRefused", remote, reason: auditBlocked });
        socket.on("error", () => socket.destroy());
        setTimeout(() => socket.destroy(), limits.lingerMs).unref();
        socket.end(
          encodeError({
            severity: "FATAL",
            code: SqlState.auditUnavailable,
            message: "connection refused: the audit trail cannot record sessions now",
          }),
        );
        return;
      }
      const id = nextId();
      const conn = new ClientConnection(id, socket, deps);
      sessions.set(id, conn);
      conn.start();
      run(superviseConnection(conn));
    });
    const reloadContext = (leg: "tls" | "upstream.tls", ctx: ReloadableContext) => {
      const r = ctx.reload();
      if (r.reloaded) log.info({ leg, generation: r.generation }, "TLS certificates reloaded");
      else log.error({ leg, reason: r.error.message }, "TLS reload failed; keeping the running certificates");
      const outcome = r.reloaded ? { ok: true } : { ok: false, reason: r.error.message };
      events.emit({ kind: "reload", what: "tls", ...outcome });
      return outcome;
    };
    const reloadAccess = (next: PgwardenConfig) => {
      const recompiled = compileRules(next);
      if (isPgwardenError(recompiled))
        log.error({ reason: recompiled.message }, "access rules reload failed; keeping the running rules");
      else {
        access = recompiled;
        log.info({ rules: next.access.rules.map((r) => r.name) }, "access rules reloaded");
      }
      const outcome = isPgwardenError(recompiled) ? { ok: false, reason: recompiled.message } : { ok: true };
      events.emit({ kind: "reload", what: "access", ...outcome });
      return outcome;
    };
    // Lowered limits apply to new sessions; new timeouts to each session's next check.
    const reloadSessions = (next: PgwardenConfig) => {
      sessionCounter.reconfigure(next.sessions);
      sessionTimers = next.sessions;
      events.emit({ kind: "reload", what: "sessions", ok: true });
      return { ok: true };
    };
    const reload = (next?: PgwardenConfig): ReloadReport => ({
      ...(tlsContext === undefined ? {} : { tls: reloadContext("tls", tlsContext) }),
      ...(upstreamContext === undefined
        ? {}
        : { upstreamTls: reloadContext("upstream.tls", upstreamContext) }),
      ...(next === undefined ? {} : { access: reloadAccess(next), sessions: reloadSessions(next) }),
    });
    const fips = options.fipsStatus;
    events.emit({
      kind: "fipsStatus",
      enabled: config.fips,
      passed: fips?.ok ?? false,
      provider: fips?.providers?.find((p) => p.id === "fips")?.name,
      results: (fips?.probes ?? []).map((p) => ({ name: p.name, ok: p.ok })),
    });
    onListening({ server, sessions, cancels, pool, reload });
    log.info({ address: server.address() }, "listening");

    const first = yield* Effect.raceFirst(
      Deferred.await(signals.drain).pipe(Effect.as("drain" as const)),
      Deferred.await(signals.stop).pipe(Effect.as("stop" as const)),
    );
    server.close();
    if (first === "drain" && sessions.size > 0) {
      log.info({ sessions: sessions.size, timeoutMs: config.shutdown.drainTimeoutMs }, "draining");
      yield* Effect.raceFirst(
        FiberSet.awaitEmpty(fibers).pipe(Effect.timeoutOption(config.shutdown.drainTimeoutMs)),
        Deferred.await(signals.stop),
      );
    }
    if (sessions.size > 0) log.info({ sessions: sessions.size }, "ending remaining sessions");
    yield* endSessions(sessions, limits.lingerMs);
    yield* FiberSet.clear(fibers);
    log.info("stopped");
  });

/** Starts the proxy; resolves once it listens, rejects when it cannot. */
export const startServer = async (options: ServerOptions): Promise<RunningServer> => {
  const drain = Deferred.makeUnsafe<void>();
  const stop = Deferred.makeUnsafe<void>();
  let ready!: (l: Listening) => void;
  let failed!: (e: unknown) => void;
  const listening = new Promise<Listening>((res, rej) => {
    ready = res;
    failed = rej;
  });
  const cancels = new CancelRegistry();
  const fiber = Effect.runFork(
    Effect.scoped(program(options, { drain, stop }, ready)).pipe(
      Effect.provideService(Config, options.config),
      Effect.provideService(Users, options.users),
      Effect.provideService(Cancels, cancels),
      Effect.provideService(Events, options.events ?? discardEvents),
    ),
  );
  const stopped = new Promise<StopResult>((resolve) => {
    fiber.addObserver((exit) => {
      if (exit._tag === "Failure") {
        const cause = String(exit.cause);
        failed(new Error(cause));
        resolve({ ok: false, cause });
      } else resolve({ ok: true });
    });
  });
  const { server, sessions, pool, reload } = await listening;
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("listener has no TCP address");
  return {
    host: addr.address,
    port: addr.port,
    sessions,
    cancels,
    pool,
    stopped,
    reload,
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
