import { execFile } from "node:child_process";
import * as net from "node:net";
import type * as tls from "node:tls";
import { startTlsOnSocket, type TlsSession } from "../../src/adapters/tls/startTls.ts";
import type { PgwardenError } from "../../src/errors.ts";

/** SSLRequest: length 8, code 80877103. */
export const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

export interface TlsTestServer {
  readonly port: number;
  /** Every handshake outcome, in order. */
  readonly outcomes: (TlsSession | PgwardenError)[];
  /** Resolves with the next outcome. */
  next(): Promise<TlsSession | PgwardenError>;
  close(): Promise<void>;
}

/**
 * A loopback server doing what the first-packet step will: read SSLRequest (answer through
 * startTlsOnSocket) or a direct-TLS first byte, then hand the socket to startTlsOnSocket. After a
 * handshake it writes `ok <protocol> <cipher> <cn>` and ends the connection.
 */
export const startTlsTestServer = async (
  context: () => tls.SecureContext,
  options: {
    requestCert?: boolean;
    requireCert?: boolean;
    keepOpen?: boolean;
    handshakeTimeoutMs?: number;
  } = {},
): Promise<TlsTestServer> => {
  const outcomes: (TlsSession | PgwardenError)[] = [];
  const waiters: ((o: TlsSession | PgwardenError) => void)[] = [];
  const sockets = new Set<net.Socket>();
  const record = (o: TlsSession | PgwardenError) => {
    outcomes.push(o);
    waiters.shift()?.(o);
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffered = Buffer.alloc(0);
    const onData = async (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const direct = buffered[0] === 0x16;
      if (!direct && buffered.length < 8) return;
      socket.off("data", onData);
      socket.pause();
      if (!direct && !buffered.subarray(0, 8).equals(SSL_REQUEST)) {
        socket.destroy();
        return;
      }
      const outcome = await startTlsOnSocket(socket, {
        context: context(),
        negotiation: direct ? "direct" : "ssl-request",
        buffered: direct ? buffered : buffered.subarray(8),
        requestCert: options.requestCert ?? false,
        requireCert: options.requireCert ?? false,
        handshakeTimeoutMs: options.handshakeTimeoutMs ?? 5000,
      });
      record(outcome);
      if ("_tag" in outcome) {
        socket.destroy();
        return;
      }
      outcome.socket.on("error", () => {});
      sockets.add(outcome.socket as unknown as net.Socket);
      outcome.socket.write(`ok ${outcome.protocol} ${outcome.cipher} ${outcome.peer?.commonName ?? "-"}\n`);
      if (options.keepOpen === true) outcome.socket.on("data", (d) => outcome.socket.write(d));
      else outcome.socket.end();
    };
    socket.on("data", onData);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    outcomes,
    next: () => new Promise((r) => waiters.push(r)),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
};

export interface ProcessResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command with a time bound; never rejects. */
export const run = (
  file: string,
  args: readonly string[],
  input = "",
  timeoutMs = 15_000,
): Promise<ProcessResult> =>
  new Promise((resolve) => {
    const child = execFile(file, args, { timeout: timeoutMs, encoding: "utf8" }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(input);
  });

/** `openssl s_client` speaking PostgreSQL's SSLRequest first (or direct TLS with `direct`). */
export const sClient = (port: number, args: readonly string[], direct = false): Promise<ProcessResult> =>
  run("openssl", [
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    ...(direct ? [] : ["-starttls", "postgres"]),
    "-ign_eof",
    ...args,
  ]);
