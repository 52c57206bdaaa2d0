import { createServer, type Server, type Socket } from "node:net";
import { type AdminSessionOptions, serveAdmin } from "../../src/admin/AdminSession.ts";
import type { AdminSource } from "../../src/admin/snapshot.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { encodeAuthentication } from "../../src/protocol/backend.ts";
import { decodeFirstPacket, firstPacketLength } from "../../src/protocol/startup.ts";
import { createLogger } from "../../src/runtime/logger.ts";

/**
 * A stand-in for pgwarden's front door: takes the startup packet (refusing TLS and GSS), sends
 * AuthenticationOk, and hands the socket and whatever followed the startup packet to serveAdmin.
 */
export interface TestConsole {
  readonly port: number;
  /** One per connection, resolved when serveAdmin does. */
  readonly sessions: Promise<void>[];
  /** Server-side sockets, in accept order. */
  readonly sockets: Socket[];
  /** Startup parameters of each connection. */
  readonly startups: ReadonlyMap<string, string>[];
  /** Every log line written, parsed. */
  readonly logs: Record<string, unknown>[];
  close(): Promise<void>;
}

type Options = Omit<AdminSessionOptions, "log" | "pending" | "maxMessageBytes"> & {
  maxMessageBytes?: number;
};

const readStartup = (
  socket: Socket,
): Promise<{ params: ReadonlyMap<string, string>; rest: Buffer } | undefined> =>
  new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const len = firstPacketLength(buf, false);
        if (len === "need-more") return;
        if (typeof len !== "number" || buf.length < len) {
          if (typeof len !== "number") done(undefined);
          return;
        }
        const packet = decodeFirstPacket(buf.subarray(0, len));
        buf = buf.subarray(len);
        if (isPgwardenError(packet)) return done(undefined);
        if (packet.kind === "SSLRequest" || packet.kind === "GSSENCRequest") {
          socket.write("N");
          continue;
        }
        if (packet.kind !== "Startup") return done(undefined);
        return done({ params: packet.parameters, rest: buf });
      }
    };
    const done = (v: { params: ReadonlyMap<string, string>; rest: Buffer } | undefined) => {
      socket.off("data", onData);
      socket.pause();
      if (v === undefined) socket.destroy();
      resolve(v);
    };
    socket.on("data", onData);
  });

export const startConsole = async (source: AdminSource, options: Options = {}): Promise<TestConsole> => {
  const logs: Record<string, unknown>[] = [];
  const log = createLogger("debug", {
    write: (line: string) => {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
  const sessions: Promise<void>[] = [];
  const sockets: Socket[] = [];
  const startups: ReadonlyMap<string, string>[] = [];
  const server: Server = createServer((socket) => {
    sockets.push(socket);
    socket.on("error", () => {});
    sessions.push(
      readStartup(socket).then(async (startup) => {
        if (startup === undefined) return;
        startups.push(startup.params);
        socket.write(encodeAuthentication({ kind: "Ok" }));
        await serveAdmin(socket, source, {
          maxMessageBytes: 1_048_576,
          ...options,
          log,
          pending: startup.rest,
        });
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return {
    port: address.port,
    sessions,
    sockets,
    startups,
    logs,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.all(sessions);
    },
  };
};
