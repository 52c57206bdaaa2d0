import { connect, type Socket } from "node:net";
import type { SecureContext } from "node:tls";
import { TLS_SERVER_END_POINT, tlsServerEndPoint } from "../auth/channelBinding.ts";
import { md5PasswordMessage } from "../auth/md5.ts";
import { SaltedPasswordCache, scramSaltOf } from "../auth/SaltedPasswordCache.ts";
import { createScramClient, SCRAM_CLIENT_MAX_ITERATIONS, selectScramOptions } from "../auth/scramClient.ts";
import type { ScramChannelBinding } from "../auth/scramServer.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import {
  type BackendKeyData,
  decodeAuthentication,
  decodeBackendKeyData,
  decodeFields,
  decodeReadyForQuery,
} from "../protocol/backend.ts";
import {
  encodePasswordMessage,
  encodeSASLInitialResponse,
  encodeSASLResponse,
  encodeTerminate,
} from "../protocol/frontend.ts";
import { Backend } from "../protocol/messageTypes.ts";
import { serverStartupPolicy } from "../protocol/policies.ts";
import { encodeCancelRequest, encodeStartup } from "../protocol/startup.ts";
import { MessageStream } from "./MessageStream.ts";
import { markOwnBuffer, ownReadBuffer } from "./readBuffer.ts";
import type { UpstreamTlsMode } from "./tls/config.ts";
import { negotiateUpstreamTls } from "./tls/upstreamTls.ts";

/** TLS to PostgreSQL as configured (`upstream.tls`), with its context built once at start. */
export interface UpstreamTls {
  readonly mode: Exclude<UpstreamTlsMode, "disable">;
  /** The context for new connections (reloaded on SIGHUP). */
  readonly context: () => SecureContext;
  readonly servername?: string;
  readonly direct: boolean;
  readonly handshakeTimeoutMs: number;
}

export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  /** Undefined: plaintext (`upstream.tls.mode: disable`). Otherwise never a plaintext fallback. */
  readonly tls?: UpstreamTls;
  /** md5 password authentication is refused (FIPS mode). */
  readonly refuseMd5?: boolean;
}

export interface UpstreamLogin extends UpstreamTarget {
  /** Startup parameters to send: user, database, and the client's allowlisted settings. */
  readonly parameters: ReadonlyMap<string, string>;
  /** The upstream password, with its SaltedPassword cache; undefined when none is configured. */
  readonly credentials: UpstreamCredentials | undefined;
  /** Aborting destroys the socket: the login deadline passed, or the client went away. */
  readonly signal?: AbortSignal;
  /** Told when TCP is up and the startup packet is about to go. */
  readonly onConnected?: () => void;
}

/** The password pgwarden logs in upstream with, and what SCRAM derived from it before. */
export class UpstreamCredentials {
  readonly password: string;
  readonly salted: SaltedPasswordCache;
  constructor(password: string) {
    this.password = password;
    this.salted = new SaltedPasswordCache(password);
  }
}

/** An authenticated server connection, ready for queries. */
export interface Upstream {
  readonly socket: Socket;
  readonly key: BackendKeyData;
  /** ParameterStatus and NoticeResponse messages of the startup, as received, to relay. */
  readonly startupMessages: readonly Buffer[];
  /** The ReadyForQuery that ended the startup. */
  readonly ready: Buffer;
  /** Messages that followed ReadyForQuery in the same read. */
  readonly pending: readonly Buffer[];
  /** How pgwarden authenticated upstream: trust, password, md5, SCRAM-SHA-256 or SCRAM-SHA-256-PLUS. */
  readonly method: string;
  /** The negotiated TLS protocol, or undefined on a plaintext leg. */
  readonly tlsProtocol: string | undefined;
}

/**
 * The server refused the login. Its own message names pgwarden's service role and is for
 * pgwarden's log; the client is told only the SQLSTATE.
 */
export interface UpstreamRefusal {
  readonly _tag: "UpstreamRefusal";
  readonly sqlstate: string;
  readonly message: string;
}

const unavailable = (message: string): PgwardenError =>
  pgwardenError("PGW_UPSTREAM_UNAVAILABLE", SqlState.connectionFailure, message);
const authProblem = (message: string): PgwardenError =>
  pgwardenError("PGW_UPSTREAM_AUTH", SqlState.invalidAuthorization, message);

/** Opens a TCP connection with a deadline. */
export const openSocket = (t: UpstreamTarget, signal?: AbortSignal): Promise<Socket | PgwardenError> =>
  new Promise((resolve) => {
    // A TLS leg reads through OpenSSL, whose socket cannot take a buffer of its own.
    const socket =
      t.tls === undefined
        ? markOwnBuffer(
            connect({ host: t.host, port: t.port, noDelay: true, keepAlive: true, onread: ownReadBuffer() }),
          )
        : connect({ host: t.host, port: t.port, noDelay: true, keepAlive: true });
    if (signal !== undefined) {
      if (signal.aborted) socket.destroy();
      else signal.addEventListener("abort", () => socket.destroy(), { once: true });
    }
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(unavailable(`connecting to PostgreSQL at ${t.host}:${t.port} timed out`));
    }, t.connectTimeoutMs);
    const failed = (e: Error) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(
        unavailable(
          `cannot connect to PostgreSQL at ${t.host}:${t.port}: ${(e as NodeJS.ErrnoException).code ?? e.message}`,
        ),
      );
    };
    socket.once("connect", () => {
      clearTimeout(timer);
      // `off`, not removeAllListeners: Node then only clears the slot, where a `delete` would
      // turn the socket's listener table into a dictionary (448 bytes more per connection).
      socket.off("error", failed);
      resolve(socket);
    });
    socket.once("error", failed);
  });

/** A TCP connection, then TLS when configured; a TLS failure is an error, never plaintext. */
const openLeg = async (
  t: UpstreamTarget,
  signal?: AbortSignal,
): Promise<
  { socket: Socket; binding: ScramChannelBinding | undefined; protocol?: string } | PgwardenError
> => {
  const socket = await openSocket(t, signal);
  if (isPgwardenError(socket) || t.tls === undefined) {
    return isPgwardenError(socket) ? socket : { socket, binding: undefined };
  }
  const session = await negotiateUpstreamTls(socket, {
    mode: t.tls.mode,
    context: t.tls.context(),
    host: t.host,
    ...(t.tls.servername === undefined ? {} : { servername: t.tls.servername }),
    direct: t.tls.direct,
    handshakeTimeoutMs: t.tls.handshakeTimeoutMs,
  });
  if (isPgwardenError(session)) return session;
  if (signal?.aborted === true) {
    session.socket.destroy();
    return unavailable("login abandoned");
  }
  signal?.addEventListener("abort", () => session.socket.destroy(), { once: true });
  const data = tlsServerEndPoint(session.serverCertificate);
  return {
    socket: session.socket,
    binding: Buffer.isBuffer(data) ? { type: TLS_SERVER_END_POINT, data } : undefined,
    protocol: session.protocol,
  };
};

/**
 * Connects and logs in to PostgreSQL as a client: trust, cleartext, md5 or SCRAM-SHA-256
 * (-PLUS, bound to PostgreSQL's certificate, when the leg is TLS and it is offered), with the
 * password from pgwarden's configuration, so clients never hold it.
 */
export const connectUpstream = async (
  login: UpstreamLogin,
): Promise<Upstream | UpstreamRefusal | PgwardenError> => {
  const leg = await openLeg(login, login.signal);
  if (isPgwardenError(leg)) return leg;
  const socket = leg.socket;
  login.onConnected?.();
  const result = await startup(socket, login, leg.binding, leg.protocol).catch(
    (e: unknown): PgwardenError => unavailable(`upstream login failed: ${(e as Error).message}`),
  );
  if (isPgwardenError(result) || "_tag" in result) {
    socket.end(encodeTerminate());
    socket.destroy();
  }
  return result;
};

const startup = async (
  socket: Socket,
  login: UpstreamLogin,
  binding: ScramChannelBinding | undefined,
  tlsProtocol: string | undefined,
): Promise<Upstream | UpstreamRefusal | PgwardenError> => {
  const stream = new MessageStream(socket, serverStartupPolicy);
  const deadline = Date.now() + login.connectTimeoutMs;
  const next = () =>
    stream.nextWithin(Math.max(1, deadline - Date.now()), "PostgreSQL to finish the startup");
  const user = login.parameters.get("user") ?? "";
  const credentials = login.credentials;
  const password = credentials?.password;
  socket.write(encodeStartup(login.parameters));
  let scram: ReturnType<typeof createScramClient> | undefined;
  const startupMessages: Buffer[] = [];
  let key: BackendKeyData | undefined;
  let method = "trust";
  for (;;) {
    const msg = await next();
    if (msg === "closed") return unavailable("PostgreSQL closed the connection during startup");
    if (isPgwardenError(msg)) return msg;
    switch (msg[0]) {
      case Backend.Authentication: {
        const auth = decodeAuthentication(msg);
        if (isPgwardenError(auth)) return auth;
        if (auth.kind === "Ok") break;
        if (auth.kind === "Unsupported")
          return authProblem(`PostgreSQL asked for unsupported authentication (code ${auth.code})`);
        if (password === undefined)
          return authProblem(
            `PostgreSQL asked for a password for role "${user}" and upstream.password is not set`,
          );
        if (auth.kind === "CleartextPassword") {
          method = "password";
          socket.write(encodePasswordMessage(password));
        } else if (auth.kind === "MD5Password") {
          // MD5 is no approved algorithm: in FIPS mode it cannot (and must not) be used.
          if (login.refuseMd5 === true)
            return authProblem(
              `PostgreSQL asked for md5 authentication for role "${user}", refused in FIPS mode`,
            );
          method = "md5";
          socket.write(encodePasswordMessage(md5PasswordMessage(user, password, auth.salt)));
        } else if (auth.kind === "SASL") {
          const options = selectScramOptions(auth.mechanisms, binding);
          if (isPgwardenError(options)) return options;
          scram = createScramClient(password, options);
          method = scram.mechanism;
          socket.write(encodeSASLInitialResponse(scram.mechanism, Buffer.from(scram.clientFirst())));
        } else if (auth.kind === "SASLContinue") {
          if (scram === undefined || credentials === undefined)
            return authProblem("SASLContinue before SASL");
          const serverFirst = auth.data.toString("utf8");
          const params = scramSaltOf(serverFirst);
          let salted: Buffer | undefined;
          // PBKDF2 off the event loop, once per (salt, iterations); absurd counts are refused below.
          if (params !== undefined && params.iterations <= SCRAM_CLIENT_MAX_ITERATIONS)
            salted = await credentials.salted.get(params.salt, params.iterations);
          const final = scram.handleServerFirst(serverFirst, salted);
          if (isPgwardenError(final)) return final;
          socket.write(encodeSASLResponse(Buffer.from(final)));
        } else if (auth.kind === "SASLFinal") {
          if (scram === undefined) return authProblem("SASLFinal before SASL");
          const ok = scram.verifyServerFinal(auth.data.toString("utf8"));
          if (isPgwardenError(ok)) return ok;
        }
        break;
      }
      case Backend.ErrorResponse: {
        const fields = decodeFields(msg);
        if (isPgwardenError(fields)) return fields;
        return {
          _tag: "UpstreamRefusal",
          sqlstate: fields.get("C") ?? SqlState.connectionFailure,
          message: fields.get("M") ?? "PostgreSQL refused the connection",
        };
      }
      case Backend.BackendKeyData: {
        const k = decodeBackendKeyData(msg);
        if (isPgwardenError(k)) return k;
        key = k;
        break;
      }
      case Backend.ParameterStatus:
      case Backend.NoticeResponse:
        startupMessages.push(msg);
        break;
      case Backend.NegotiateProtocolVersion:
        // The server speaks an older minor version; the client's version is pgwarden's business.
        break;
      case Backend.ReadyForQuery: {
        const status = decodeReadyForQuery(msg);
        if (isPgwardenError(status)) return status;
        const pending = stream.handOff();
        if (isPgwardenError(pending)) return pending;
        return {
          socket,
          key: key ?? { processId: 0, secret: Buffer.alloc(4) },
          startupMessages,
          ready: msg,
          pending,
          method,
          tlsProtocol,
        };
      }
      default:
        return unavailable(`unexpected message 0x${msg[0]!.toString(16)} from PostgreSQL during startup`);
    }
  }
};

/**
 * Sends a CancelRequest on a fresh connection, as PostgreSQL requires, and resolves once
 * PostgreSQL has closed it: PostgreSQL closes only after signalling the backend, and clients
 * such as libpq wait for that close so a cancel cannot land on their next statement. Bounded by
 * `target.connectTimeoutMs`.
 */
export const sendCancel = async (target: UpstreamTarget, key: BackendKeyData): Promise<void> => {
  // Over TLS too when configured: the cancel key is a secret.
  const leg = await openLeg(target);
  if (isPgwardenError(leg)) return;
  const socket = leg.socket;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => socket.destroy(), target.connectTimeoutMs);
    socket.on("error", () => socket.destroy());
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.resume();
    socket.write(encodeCancelRequest(key.processId, key.secret));
  });
};
