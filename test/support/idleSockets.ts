import { connect, type Socket } from "node:net";
import { encodeQuery, encodeTerminate } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";

/**
 * Thousands of idle logged-in clients from one process at the cost of a socket each: a trust
 * startup, read up to the first ReadyForQuery, then nothing. Far cheaper than as many pg clients.
 */

export interface IdleClient {
  readonly socket: Socket;
  /** Bytes received after login; an idle client should receive none. */
  unexpected: number;
  closed: boolean;
}

export interface IdleClients {
  readonly clients: readonly IdleClient[];
  readonly failures: readonly string[];
  /** Seconds from the first connect to the last ReadyForQuery. */
  readonly seconds: number;
  /** Runs one simple query on client `i` and resolves with the reply's message types. */
  probe(i: number, sql: string, ms?: number): Promise<string>;
  close(): Promise<void>;
}

/** Index just past the first ReadyForQuery in `buf`, -1 if none yet; throws on an ErrorResponse. */
const readyEnd = (buf: Buffer): number => {
  let p = 0;
  while (p + 5 <= buf.length) {
    const len = buf.readInt32BE(p + 1);
    if (p + 1 + len > buf.length) return -1;
    const type = buf[p];
    if (type === 0x45)
      throw new Error(
        buf
          .toString("utf8", p + 5, p + 1 + len)
          .replaceAll("\0", " ")
          .trim(),
      );
    if (type === 0x5a) return p + 1 + len;
    p += 1 + len;
  }
  return -1;
};

const loginOne = (port: number, startup: Buffer, ms: number): Promise<IdleClient> =>
  new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1" });
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new Error("login timed out")), ms);
    const fail = (e: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    };
    socket.on("error", fail);
    socket.on("connect", () => socket.write(startup));
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      let end: number;
      try {
        end = readyEnd(buf);
      } catch (e) {
        fail(e as Error);
        return;
      }
      if (end < 0) return;
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", fail);
      const client: IdleClient = { socket, unexpected: buf.length - end, closed: false };
      socket.on("data", (c: Buffer) => {
        client.unexpected += c.length;
      });
      socket.on("error", () => {});
      socket.on("close", () => {
        client.closed = true;
      });
      resolve(client);
    };
    socket.on("data", onData);
    socket.on("close", () => fail(new Error("closed during login")));
  });

export const holdIdleClients = async (o: {
  port: number;
  user: string;
  database: string;
  count: number;
  concurrency?: number;
  loginTimeoutMs?: number;
}): Promise<IdleClients> => {
  const startup = encodeStartup(
    new Map([
      ["user", o.user],
      ["database", o.database],
    ]),
  );
  const clients: IdleClient[] = [];
  const failures: string[] = [];
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < o.count) {
      next++;
      try {
        clients.push(await loginOne(o.port, startup, o.loginTimeoutMs ?? 60_000));
      } catch (e) {
        failures.push((e as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency ?? 200, o.count) }, worker));
  const seconds = (performance.now() - started) / 1000;
  return {
    clients,
    failures,
    seconds,
    probe: (i, sql, ms = 10_000) =>
      new Promise((resolve, reject) => {
        const c = clients[i]!;
        const before = c.unexpected;
        let buf = Buffer.alloc(0);
        const timer = setTimeout(() => reject(new Error(`probe of client ${i} timed out`)), ms);
        const onData = (chunk: Buffer) => {
          buf = Buffer.concat([buf, chunk]);
          const types: string[] = [];
          let p = 0;
          while (p + 5 <= buf.length) {
            const len = buf.readInt32BE(p + 1);
            if (p + 1 + len > buf.length) return;
            types.push(String.fromCharCode(buf[p]!));
            p += 1 + len;
            if (types.at(-1) === "Z") {
              clearTimeout(timer);
              c.socket.off("data", onData);
              c.unexpected = before;
              resolve(types.join(" "));
              return;
            }
          }
        };
        c.socket.on("data", onData);
        c.socket.write(encodeQuery(sql));
      }),
    close: async () => {
      for (let i = 0; i < clients.length; i += 500) {
        await Promise.all(
          clients.slice(i, i + 500).map(
            (c) =>
              new Promise<void>((resolve) => {
                if (c.closed) return resolve();
                c.socket.once("close", () => resolve());
                c.socket.end(encodeTerminate());
                setTimeout(() => {
                  c.socket.destroy();
                  resolve();
                }, 5000).unref();
              }),
          ),
        );
      }
    },
  };
};
