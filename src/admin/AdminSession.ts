import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import type { Logger } from "pino";
import { MessageStream, type Next } from "../adapters/MessageStream.ts";
import { isPgwardenError, type PgwardenError, pgwardenError, protocolError, SqlState } from "../errors.ts";
import {
  type BackendKeyData,
  encodeBackendKeyData,
  encodeError,
  encodeParameterStatus,
  encodeReadyForQuery,
} from "../protocol/backend.ts";
import { decodeQuery } from "../protocol/frontend.ts";
import type { ScanPolicy } from "../protocol/MessageScanner.ts";
import { Frontend, frontendName } from "../protocol/messageTypes.ts";
import { clientSessionPolicy } from "../protocol/policies.ts";
import { parseAdminQuery, respond } from "./commands.ts";
import type { AdminSource } from "./snapshot.ts";

export interface AdminSessionOptions {
  /** Largest Query message accepted (limits.maxMessageBytes); other types keep PostgreSQL's caps. */
  readonly maxMessageBytes: number;
  readonly log: Logger;
  /** Bytes the client sent past its last authentication message, read before the hand-over. */
  readonly pending?: Buffer | undefined;
  /** The cancel key to announce; random when absent (a cancel aimed at the console has nothing to stop). */
  readonly backendKey?: BackendKeyData | undefined;
  /** How long a close waits for the peer before the socket is destroyed. */
  readonly closeGraceMs?: number | undefined;
  /** Ends a session that sends nothing for this long (57P05); absent or 0: never. */
  readonly idleTimeoutMs?: number | undefined;
  /** Aborting ends the session at once with 57P01, as at pgwarden's shutdown. */
  readonly signal?: AbortSignal | undefined;
}

/** Every message held whole (no streamed CopyData), with the session's size caps. */
const adminPolicy = (maxMessageBytes: number): ScanPolicy => {
  const { known, sender, maxLength } = clientSessionPolicy(maxMessageBytes);
  return { known, sender, maxLength, streamed: new Uint8Array(256) };
};

const EXTENDED = new Set<number>([
  Frontend.Parse,
  Frontend.Bind,
  Frontend.Describe,
  Frontend.Execute,
  Frontend.Close,
  Frontend.Sync,
  Frontend.Flush,
]);

/** What follows AuthenticationOk, as PgBouncer's console sends it: parameters, key, ready. */
export const adminWelcome = (version: string, key: BackendKeyData): Buffer[] => [
  encodeParameterStatus("server_version", `${version}/pgwarden`),
  encodeParameterStatus("client_encoding", "UTF8"),
  encodeParameterStatus("server_encoding", "UTF8"),
  encodeParameterStatus("DateStyle", "ISO"),
  encodeParameterStatus("TimeZone", "UTC"),
  encodeParameterStatus("integer_datetimes", "on"),
  encodeParameterStatus("standard_conforming_strings", "on"),
  encodeParameterStatus("is_superuser", "off"),
  encodeBackendKeyData(key),
  encodeReadyForQuery("I"),
];

const randomKey = (): BackendKeyData => ({
  processId: randomBytes(4).readUInt32BE(0) >>> 1,
  secret: randomBytes(4),
});

/** Why a message ends the session, in PgBouncer's words where it has them. */
const refusal = (type: number): PgwardenError =>
  EXTENDED.has(type)
    ? protocolError("extended query protocol not supported by admin console")
    : protocolError(`unsupported message type for admin console: ${frontendName(type)}`);

const idleTimeout = (): PgwardenError =>
  pgwardenError(
    "PGW_IDLE_TIMEOUT",
    SqlState.idleSessionTimeout,
    "terminating connection due to idle-session timeout",
  );
const shutdown = (): PgwardenError =>
  pgwardenError(
    "PGW_SHUTDOWN",
    SqlState.adminShutdown,
    "terminating connection due to administrator command",
  );

/** The stream's next message, unless the idle deadline or the abort signal comes first. */
const nextBefore = (
  stream: MessageStream,
  idleMs: number,
  signal: AbortSignal | undefined,
): Promise<Next> => {
  if (idleMs <= 0 && signal === undefined) return stream.next();
  if (signal?.aborted) return Promise.resolve(shutdown());
  return new Promise((resolve) => {
    const onAbort = () => settle(shutdown());
    const timer = idleMs > 0 ? setTimeout(() => settle(idleTimeout()), idleMs) : undefined;
    const settle = (v: Next) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      resolve(v);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    void stream.next().then(settle);
  });
};

/**
 * Serves the admin console on a client socket that has just been sent AuthenticationOk. Answers
 * simple Query messages until Terminate, end of stream or a protocol violation; resolves once the
 * socket has closed and never rejects. Replies are written one command at a time and the next
 * message is read only after the socket has drained, so a client that stops reading stops itself.
 */
export const serveAdmin = async (
  socket: Socket,
  source: AdminSource,
  opts: AdminSessionOptions,
): Promise<void> => {
  const { log } = opts;
  const closed = new Promise<void>((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once("close", () => resolve());
  });
  // Late errors (a reset after we stopped reading) must not become uncaught exceptions.
  const swallow = (e: Error) => log.debug({ err: e.message }, "admin console socket error");
  socket.on("error", swallow);

  const write = async (messages: Buffer[]): Promise<boolean> => {
    if (socket.destroyed || !socket.writable) return false;
    if (socket.write(Buffer.concat(messages))) return true;
    await new Promise<void>((resolve) => {
      const done = () => {
        socket.off("drain", done);
        socket.off("close", done);
        opts.signal?.removeEventListener("abort", done);
        resolve();
      };
      socket.on("drain", done);
      socket.on("close", done);
      opts.signal?.addEventListener("abort", done, { once: true });
    });
    return !socket.destroyed && opts.signal?.aborted !== true;
  };

  const finish = (last?: Buffer) => {
    if (!socket.destroyed) {
      if (last === undefined) socket.end();
      else socket.end(last);
    }
    setTimeout(() => socket.destroy(), opts.closeGraceMs ?? 1000).unref();
  };

  const fatal = (e: PgwardenError) => {
    log.info({ code: e.code, sqlstate: e.sqlstate }, "admin console session ended: %s", e.message);
    finish(encodeError({ severity: "FATAL", code: e.sqlstate, message: e.message }));
  };

  const stream = new MessageStream(socket, adminPolicy(opts.maxMessageBytes), opts.pending);
  try {
    if (await write(adminWelcome(source.version, opts.backendKey ?? randomKey()))) {
      for (;;) {
        const msg = await nextBefore(stream, opts.idleTimeoutMs ?? 0, opts.signal);
        if (msg === "closed") break;
        if (isPgwardenError(msg)) {
          fatal(msg);
          break;
        }
        const type = msg[0]!;
        if (type === Frontend.Terminate) {
          finish();
          break;
        }
        if (type !== Frontend.Query) {
          fatal(refusal(type));
          break;
        }
        const sql = decodeQuery(msg);
        if (isPgwardenError(sql)) {
          fatal(sql);
          break;
        }
        const query = parseAdminQuery(sql);
        // The command's name only: the text could hold anything, secrets included.
        log.info(
          { command: query.kind === "show" ? `SHOW ${query.what.toUpperCase()}` : query.kind },
          "admin console command",
        );
        const answer = respond(query, source, (cause) =>
          log.error(
            { err: cause instanceof Error ? cause.message : "non-Error thrown" },
            "admin console could not read pool state",
          ),
        );
        if (!(await write(answer))) break;
      }
    }
  } catch (e) {
    // Nothing above should throw; if it does, the session ends and pgwarden keeps running.
    log.error({ err: e instanceof Error ? e.message : "non-Error thrown" }, "admin console session failed");
    socket.destroy();
  } finally {
    stream.abandon();
    if (!socket.destroyed && !socket.writableEnded) finish();
  }
  await closed;
  socket.off("error", swallow);
};
