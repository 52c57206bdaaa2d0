import { readFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import * as tls from "node:tls";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { testCerts } from "../support/certs.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { type Run, runClient } from "../support/run.ts";

/** A proxy with the client leg's TLS set as given (test certificates, SCRAM for the default user). */
export const tlsProxy = (
  tlsOverrides: Record<string, unknown>,
  overrides: Record<string, unknown> = {},
): Promise<TestProxy> => {
  const certs = testCerts();
  return startProxy({
    tls: { cert: certs.server.cert, key: certs.server.key, ...tlsOverrides },
    log: { level: "info" },
    ...overrides,
  });
};

/** psql with a libpq connection string through the proxy; prints one value. */
export const psql = (port: number, params: string, sql = "select 'ok'"): Promise<Run> =>
  runClient(
    "psql",
    ["-X", "-At", "-c", sql, `host=127.0.0.1 port=${port} user=postgres dbname=postgres ${params}`],
    {
      timeoutMs: 20_000,
    },
  );

/** Log lines with this message. */
export const logged = (proxy: TestProxy, msg: string): Record<string, unknown>[] =>
  proxy.logs.filter((l) => l.msg === msg);

/** A TCP tap in front of a port: records every byte in both directions. */
export interface Tap {
  readonly port: number;
  readonly fromClient: Buffer[];
  readonly fromServer: Buffer[];
  close(): Promise<void>;
}

export const startTap = async (target: number): Promise<Tap> => {
  const fromClient: Buffer[] = [];
  const fromServer: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect({ host: "127.0.0.1", port: target });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (d: Buffer) => {
      fromClient.push(Buffer.from(d));
      upstream.write(d);
    });
    upstream.on("data", (d: Buffer) => {
      fromServer.push(Buffer.from(d));
      client.write(d);
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    fromClient,
    fromServer,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
};

/** Collects what a socket receives until it closes or `ms` pass. */
export const collect = (
  socket: Socket | tls.TLSSocket,
  ms = 3000,
): Promise<{ data: Buffer; closed: boolean }> =>
  new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const done = (closed: boolean) => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), closed });
    };
    const timer = setTimeout(() => done(false), ms);
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.on("error", () => {});
    socket.once("close", () => done(true));
  });

/** Direct TLS (PostgreSQL 17 sslnegotiation=direct): the ClientHello is the first byte. */
export const directTls = (port: number, alpn: string[] | undefined): Promise<tls.TLSSocket | Error> =>
  new Promise((resolve) => {
    const s = tls.connect({
      host: "127.0.0.1",
      port,
      ca: readFileSync(testCerts().ca.cert),
      servername: "localhost",
      ...(alpn === undefined ? {} : { ALPNProtocols: alpn }),
    });
    s.once("secureConnect", () => resolve(s));
    s.once("error", (e) => resolve(e));
  });

export const startupFor = (user = "postgres", database = "postgres"): Buffer =>
  encodeStartup(
    new Map([
      ["user", user],
      ["database", database],
    ]),
  );
