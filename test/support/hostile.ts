import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createScramClient } from "../../src/auth/scramClient.ts";
import { createScramVerifier, parseScramVerifier, type ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { formatUsersFile } from "../../src/auth/usersFile.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { encodeSASLInitialResponse, encodeSASLResponse } from "../../src/protocol/frontend.ts";
import { defaultStartupParameters } from "../../src/runtime/config.ts";
import { CLI } from "./cli.ts";
import { postgresInfo } from "./postgres.ts";
import type { WireClient } from "./wire.ts";

/**
 * Tools for hostile-client and hostile-server tests: sockets that keep their write side open,
 * packets built byte by byte, a TCP tap that times what passes, a scriptable fake PostgreSQL,
 * and RSS sampling of a `pgwarden serve` child process.
 */

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` every 20 ms; false if it never held within `ms`. */
export const eventually = async (pred: () => boolean, ms: number): Promise<boolean> => {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
};

// Bytes -----------------------------------------------------------------------------------------

export const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0);
  return b;
};

/** A message header (type byte and length field) with no body: the length may lie. */
export const header = (type: number, length: number): Buffer =>
  Buffer.concat([Buffer.from([type]), int32(length)]);

/** A complete tagged message. */
export const frame = (type: number, body: Buffer = Buffer.alloc(0)): Buffer =>
  Buffer.concat([header(type, 4 + body.length), body]);

const cstr = (v: string | Buffer): Buffer =>
  Buffer.concat([typeof v === "string" ? Buffer.from(v, "utf8") : v, Buffer.from([0])]);

/** A startup packet whose names and values may be any bytes (invalid UTF-8, odd case). */
export const rawStartup = (
  params: ReadonlyArray<readonly [string | Buffer, string | Buffer]>,
  minor = 0,
): Buffer => {
  const body = Buffer.concat([
    int32((3 << 16) | minor),
    ...params.flatMap(([k, v]) => [cstr(k), cstr(v)]),
    Buffer.from([0]),
  ]);
  return Buffer.concat([int32(4 + body.length), body]);
};

/** ErrorResponse/NoticeResponse fields of one message, by field letter. */
export const fieldsOf = (msg: Buffer): Map<string, string> => {
  const out = new Map<string, string>();
  for (const f of msg.toString("utf8", 5, msg.length - 1).split("\0"))
    if (f !== "") out.set(f[0]!, f.slice(1));
  return out;
};

/** An ErrorResponse with exactly these fields, in this order (to imitate any server). */
export const errorResponse = (fields: ReadonlyArray<readonly [string, string]>): Buffer =>
  frame(
    0x45,
    Buffer.concat([...fields.map(([k, v]) => Buffer.concat([Buffer.from(k), cstr(v)])), Buffer.from([0])]),
  );

// Sockets that keep their write side open -------------------------------------------------------

/** A raw client socket with allowHalfOpen: it never answers the server's FIN with its own. */
export class HalfOpenPeer {
  readonly socket: Socket;
  received = Buffer.alloc(0);
  /** The server sent FIN. */
  ended = false;
  /** The connection is gone entirely (the server destroyed it, or reset it). */
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on("data", (c: Buffer) => {
      this.received = Buffer.concat([this.received, c]);
    });
    socket.on("end", () => {
      this.ended = true;
    });
    socket.on("close", () => {
      this.closed = true;
    });
    socket.on("error", () => {});
  }

  static open(port: number, host = "127.0.0.1"): Promise<HalfOpenPeer> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host, allowHalfOpen: true }, () => resolve(new HalfOpenPeer(s)));
      s.once("error", reject);
    });
  }

  write(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  /**
   * Whether the server has let go of its socket within `ms`. A server that only half-closed keeps
   * reading what we send; once it has destroyed its socket, the next byte we send draws a reset.
   * So a NUL byte goes out every 100 ms until the connection is gone.
   */
  async destroyedByServer(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) {
      if (this.ended) this.write(Buffer.from([0]));
      await sleep(100);
    }
    return this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * Writes `total` bytes of `chunk` copies as fast as the peer takes them. Stops early when a write
 * has not drained for `stallMs` (the peer stopped reading) or the socket is gone.
 */
export const flood = async (
  socket: Socket,
  chunk: Buffer,
  total: number,
  stallMs = 2000,
): Promise<{ written: number; stalled: boolean }> => {
  let written = 0;
  while (written < total && !socket.destroyed) {
    const more = socket.write(chunk);
    written += chunk.length;
    if (more) continue;
    const drained = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), stallMs);
      const done = (v: boolean) => {
        clearTimeout(t);
        socket.off("drain", onDrain);
        socket.off("close", onClose);
        resolve(v);
      };
      const onDrain = () => done(true);
      const onClose = () => done(false);
      socket.once("drain", onDrain);
      socket.once("close", onClose);
    });
    if (!drained) return { written, stalled: !socket.destroyed };
  }
  return { written, stalled: false };
};

// SCRAM as a client -----------------------------------------------------------------------------

/** A users map entry, the way the users file holds it. */
export const verifier = (password: string, iterations?: number): ScramVerifier => {
  const v = parseScramVerifier(createScramVerifier(password, iterations === undefined ? {} : { iterations }));
  if (isPgwardenError(v)) throw new Error(v.message);
  return v;
};

/** The `i=` of a SCRAM server-first-message carried by an AuthenticationSASLContinue. */
export const iterationsOf = (saslContinue: Buffer): number => {
  const text = saslContinue.toString("utf8", 9);
  const m = /(?:^|,)i=(\d+)/.exec(text);
  if (m === null) throw new Error(`no i= in server-first-message: ${text}`);
  return Number(m[1]);
};

/** Authentication messages (type R) with this code, after `offset` bytes. */
export const authMessages = (c: WireClient, code: number, offset = 0): Buffer[] =>
  c
    .messages(offset)
    .filter((m) => m.type === "R" && m.msg.readInt32BE(5) === code)
    .map((m) => m.msg);

/**
 * Runs the client side of SCRAM-SHA-256 over a raw connection that has sent its startup packet
 * and waits for AuthenticationSASL. Returns the bytes it wrote.
 */
export const scramExchange = async (c: WireClient, password: string, ms = 5000): Promise<number> => {
  await c.until((x) => authMessages(x, 10).length > 0, ms, "AuthenticationSASL");
  const scram = createScramClient(password);
  const first = encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from(scram.clientFirst()));
  c.send(first);
  await c.until((x) => authMessages(x, 11).length > 0 || x.errorCode() !== undefined, ms, "SASLContinue");
  const cont = authMessages(c, 11)[0];
  if (cont === undefined) return first.length;
  const final = scram.handleServerFirst(cont.toString("utf8", 9));
  if (isPgwardenError(final)) throw new Error(final.message);
  const response = encodeSASLResponse(Buffer.from(final));
  c.send(response);
  return first.length + response.length;
};

// A TCP tap between pgwarden and PostgreSQL ----------------------------------------------------

export interface TappedConnection {
  /** The first bytes the proxy sent (a startup packet or a CancelRequest). */
  first: Buffer;
  readonly openedAt: number;
  /** When PostgreSQL (the far side) closed its end. */
  serverClosedAt: number | undefined;
  /** When the tap passed that close on to the proxy (later by `holdCloseMs`). */
  forwardedCloseAt: number | undefined;
}

export interface Tap {
  readonly port: number;
  readonly connections: TappedConnection[];
  close(): Promise<void>;
}

export interface TapOptions {
  /** Takes over a connection instead of relaying it, when it returns true. */
  readonly intercept?: (socket: Socket, index: number) => boolean;
  /** Delay before PostgreSQL's close reaches the proxy, to make "waits for it" observable. */
  readonly holdCloseMs?: number;
}

const CANCEL_CODE = 80877102;

/** True when a tapped connection carried a CancelRequest. */
export const isCancel = (c: TappedConnection): boolean =>
  c.first.length >= 8 && c.first.readInt32BE(4) === CANCEL_CODE;

const closeServer = (server: Server, sockets: Set<Socket>): Promise<void> =>
  new Promise((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
  });

/**
 * A loopback relay in front of PostgreSQL that records each connection: what it began with, and
 * when PostgreSQL closed it.
 */
export const tcpTap = async (options: TapOptions = {}, target = postgresInfo()): Promise<Tap> => {
  const connections: TappedConnection[] = [];
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  };
  const server = createServer((inbound) => {
    track(inbound);
    const index = connections.length;
    const rec: TappedConnection = {
      first: Buffer.alloc(0),
      openedAt: Date.now(),
      serverClosedAt: undefined,
      forwardedCloseAt: undefined,
    };
    connections.push(rec);
    if (options.intercept?.(inbound, index) === true) return;
    const outbound = connect({ host: target.host, port: target.port });
    track(outbound);
    const serverGone = () => {
      if (rec.serverClosedAt !== undefined) return;
      rec.serverClosedAt = Date.now();
      setTimeout(() => {
        rec.forwardedCloseAt = Date.now();
        inbound.destroy();
      }, options.holdCloseMs ?? 0);
    };
    outbound.on("end", serverGone);
    outbound.on("close", serverGone);
    inbound.on("data", (d: Buffer) => {
      if (rec.first.length < 16) rec.first = Buffer.concat([rec.first, d]).subarray(0, 16);
    });
    inbound.pipe(outbound, { end: false });
    outbound.pipe(inbound, { end: false });
    inbound.on("end", () => outbound.end());
    inbound.on("close", () => outbound.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return { port, connections, close: () => closeServer(server, sockets) };
};

// A scriptable fake PostgreSQL --------------------------------------------------------------------

export interface FakeUpstream {
  readonly port: number;
  /** Every accepted socket, in order. */
  readonly sockets: Socket[];
  close(): Promise<void>;
}

/** AuthenticationOk, BackendKeyData, ReadyForQuery(I): a trust login as PostgreSQL answers it. */
export const loginOk = (pid = 4242): Buffer =>
  Buffer.concat([
    frame(0x52, int32(0)),
    frame(0x4b, Buffer.concat([int32(pid), int32(0x5eed)])),
    frame(0x53, Buffer.from("server_version\u000018.0\u0000")),
    frame(0x5a, Buffer.from("I")),
  ]);

/**
 * A PostgreSQL stand-in on loopback. It reads the startup packet (answering an SSLRequest with
 * N) and hands the socket to `onStartup`, which scripts everything after.
 */
export const fakeUpstream = async (
  onStartup: (socket: Socket, index: number) => void,
): Promise<FakeUpstream> => {
  const sockets: Socket[] = [];
  const live = new Set<Socket>();
  const server = createServer((s) => {
    const index = sockets.length;
    sockets.push(s);
    live.add(s);
    s.on("close", () => live.delete(s));
    s.on("error", () => {});
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 8 && buf.length >= buf.readInt32BE(0)) {
        const len = buf.readInt32BE(0);
        const code = buf.readInt32BE(4);
        buf = buf.subarray(len);
        if (code === 80877103 || code === 80877104) {
          s.write("N");
          continue;
        }
        s.off("data", onData);
        if (buf.length > 0) s.unshift(buf);
        onStartup(s, index);
        return;
      }
    };
    s.on("data", onData);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return { port, sockets, close: () => closeServer(server, live) };
};

// Configuration of the security boundary ---------------------------------------------------------

/** The default startup parameter allowlist, as the configuration defines it. */
export const DEFAULT_STARTUP_PARAMETERS = defaultStartupParameters;

/**
 * Sections for startProxy: the default allowlist, options refused, anyone granted any database as
 * the non-superuser service role, which is also the upstream user.
 */
export const boundary = (): Record<string, Record<string, unknown>> => {
  const pg = postgresInfo();
  return {
    startup: { parameters: DEFAULT_STARTUP_PARAMETERS, options: "refuse" },
    access: { grants: [{ identity: "*", databases: ["*"], role: pg.appRole }] },
    upstream: { user: pg.appRole, password: pg.rolePassword },
  };
};

// `pgwarden serve` as a child process -------------------------------------------------------------

export interface ServeChild {
  readonly child: ChildProcess;
  readonly port: number;
  readonly out: { stdout: string; stderr: string };
  readonly exited: Promise<number | null>;
  /** Resident set size of the process now, in bytes. */
  rss(): number;
  /** SIGKILL if still running. */
  kill(): void;
}

/** VmRSS of a process, from /proc, in bytes. */
export const rssOf = (pid: number): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (m === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
};

/** A YAML config file (JSON is YAML) and a users file in a fresh directory. */
export const writeServeFiles = async (
  config: Record<string, unknown>,
  users: ReadonlyArray<readonly [string, ScramVerifier]> = [],
): Promise<{ dir: string; config: string; users: string }> => {
  const dir = await mkdtemp(join(tmpdir(), "pgw-hostile-"));
  const usersPath = join(dir, "users.txt");
  await writeFile(usersPath, formatUsersFile(users), { mode: 0o600 });
  const configPath = join(dir, "pgwarden.yaml");
  const auth = (config.auth ?? {}) as Record<string, unknown>;
  await writeFile(
    configPath,
    JSON.stringify({ ...config, auth: { usersFile: usersPath, ...auth } }, null, 2),
  );
  return { dir, config: configPath, users: usersPath };
};

/**
 * Starts `pgwarden serve --config FILE` (listen port from the config) and waits for the
 * listening line, or for the process to exit.
 */
export const serveChild = async (
  configPath: string,
  port: number,
  options: { nodeArgs?: string[]; waitListening?: boolean } = {},
): Promise<ServeChild> => {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), CLI, "serve", "--config", configPath], {
    env: { PATH: process.env.PATH, LANG: "C.UTF-8" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out = { stdout: "", stderr: "" };
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    out.stdout += d;
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    out.stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const handle: ServeChild = {
    child,
    port,
    out,
    exited,
    rss: () => rssOf(child.pid!),
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
  if (options.waitListening !== false) {
    const up = await eventually(() => out.stdout.includes("listening") || child.exitCode !== null, 20_000);
    if (!up || child.exitCode !== null) {
      handle.kill();
      throw new Error(`pgwarden serve did not start:\n${out.stdout}\n${out.stderr}`);
    }
  }
  return handle;
};
