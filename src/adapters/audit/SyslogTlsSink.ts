import { hostname } from "node:os";
import { connect, type TLSSocket } from "node:tls";
import { type AuditSink, SinkError, type SinkErrorCode, toSinkError } from "./AuditSink.ts";
import { ReplayWindow, type Unconfirmed } from "./ReplayWindow.ts";
import { formatMessage, frame, type SyslogFacility, syslogHeader } from "./rfc5424.ts";

/**
 * Syslog over mutual TLS (RFC 5425), one connection at a time, reopened on the next delivery
 * after any failure. Syslog has no application-level acknowledgement: a batch counts as
 * delivered once its frames were written and flushed to the TLS socket (handed to the kernel).
 * To keep a collector that dies right after that from losing them silently, what was written in
 * the last `replayMs` before a connection broke is written again first on the next one; the
 * `id` in structured data lets the collector side drop those copies and the ones a retry resends.
 */

export interface SyslogTlsSinkOptions {
  /** Name in counters, events and errors; "syslog" unless set. */
  readonly name?: string;
  readonly host: string;
  readonly port: number;
  /** PEM contents, never paths: reading files is the caller's business. */
  readonly ca: string | Buffer;
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
  /** Name the collector's certificate must carry; the host unless set. */
  readonly servername?: string;
  readonly appName: string;
  readonly facility: SyslogFacility;
  /** HOSTNAME field; the machine's name unless set. */
  readonly hostname?: string;
  /** SD-ID carrying seq and id. */
  readonly sdId: string;
  readonly connectTimeoutMs: number;
  readonly writeTimeoutMs: number;
  /** A new connection must stay open this long before the first write (see `open`). */
  readonly settleMs: number;
  /** Written data younger than this when a connection breaks is resent on the next (0: never). */
  readonly replayMs: number;
  /** Cap on the lines kept for that. */
  readonly replayMaxLines: number;
  /** TIMESTAMP source, for tests. */
  readonly now?: () => Date;
}

const tlsErrorCodes = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO|SELF_SIGNED|HOSTNAME_)/;

const classify = (sink: string, cause: unknown): SinkError => {
  const code = (cause as { code?: unknown } | null)?.code;
  const kind: SinkErrorCode =
    typeof code === "string" && tlsErrorCodes.test(code) ? "PGW_AUDIT_SINK_TLS" : "PGW_AUDIT_SINK_CONNECT";
  return toSinkError(sink, kind, cause);
};

export const makeSyslogTlsSink = (options: SyslogTlsSinkOptions): AuditSink => {
  const name = options.name ?? "syslog";
  const header = syslogHeader({
    facility: options.facility,
    hostname: options.hostname ?? hostname(),
    appName: options.appName,
    procId: String(process.pid),
    msgId: "audit",
    sdId: options.sdId,
  });
  const now = options.now ?? (() => new Date());
  const fail = (code: SinkErrorCode, message: string) => new SinkError({ code, sink: name, message });

  let live: TLSSocket | undefined;
  let opening: Promise<TLSSocket> | undefined;
  let closed = false;
  /** Written on a connection that broke since; goes out again before anything new. */
  let resend: Unconfirmed[] = [];
  const windows = new WeakMap<TLSSocket, ReplayWindow>();

  const forget = (s: TLSSocket) => {
    if (live === s) live = undefined;
    const window = windows.get(s);
    if (window !== undefined) resend = [...resend, ...window.takeUnconfirmed(Date.now())];
  };

  // rsyslog verifies the client certificate only after the TLS handshake and then hangs up, so a
  // write straight after `secureConnect` could vanish; waiting `settleMs` lets a refusal arrive first.
  const open = () =>
    new Promise<TLSSocket>((resolve, reject) => {
      const s = connect({
        host: options.host,
        port: options.port,
        servername: options.servername ?? options.host,
        ca: options.ca,
        cert: options.cert,
        key: options.key,
        minVersion: "TLSv1.2",
        rejectUnauthorized: true,
      });
      let done = false;
      const finish = (error?: SinkError) => {
        if (done) return;
        done = true;
        clearTimeout(deadline);
        s.removeListener("error", onError);
        s.removeListener("close", onClose);
        s.removeListener("end", onClose);
        if (error !== undefined) {
          s.destroy();
          reject(error);
          return;
        }
        const drop = () => forget(s);
        s.on("error", drop).on("end", drop).on("close", drop);
        windows.set(s, new ReplayWindow(options.replayMs, options.replayMaxLines));
        resolve(s);
      };
      const onError = (e: unknown) => finish(classify(name, e));
      const onClose = () =>
        finish(fail("PGW_AUDIT_SINK_TLS", "collector closed the connection during set-up"));
      const deadline = setTimeout(
        () => finish(fail("PGW_AUDIT_SINK_TIMEOUT", `no TLS session within ${options.connectTimeoutMs} ms`)),
        options.connectTimeoutMs + options.settleMs,
      );
      s.on("error", onError).on("close", onClose).on("end", onClose);
      s.once("secureConnect", () => {
        s.resume(); // the collector sends nothing, but reading is how its hang-up is noticed
        setTimeout(() => finish(), options.settleMs);
      });
    });

  const connection = async (): Promise<TLSSocket> => {
    if (live?.writable && !live.destroyed) return live;
    opening ??= open().finally(() => {
      opening = undefined;
    });
    live = await opening;
    return live;
  };

  const write = (s: TLSSocket, data: Buffer) =>
    new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(() => {
        forget(s);
        s.destroy();
        reject(fail("PGW_AUDIT_SINK_TIMEOUT", `write not flushed within ${options.writeTimeoutMs} ms`));
      }, options.writeTimeoutMs);
      s.write(data, (err) => {
        clearTimeout(deadline);
        if (err === undefined || err === null) return resolve();
        forget(s);
        s.destroy();
        reject(toSinkError(name, "PGW_AUDIT_SINK_WRITE", err));
      });
    });

  return {
    name,
    deliver: async (batch) => {
      if (closed) throw fail("PGW_AUDIT_SINK_CLOSED", "sink is closed");
      if (batch.length === 0) return;
      const at = now();
      const fresh = batch.map((line) => frame(formatMessage(header, line, at)));
      const s = await connection();
      const replayed = resend;
      const data = Buffer.concat([...replayed.map((u) => u.data), ...fresh]);
      await write(s, data);
      resend = resend.slice(replayed.length);
      const lines = replayed.reduce((n, u) => n + u.lines, batch.length);
      windows.get(s)?.record(data, lines, Date.now());
    },
    close: async () => {
      closed = true;
      const s = live ?? (await opening?.catch(() => undefined));
      live = undefined;
      if (s === undefined || s.destroyed) return;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(deadline);
          s.destroy();
          resolve();
        };
        const deadline = setTimeout(done, 2000);
        s.once("close", done);
        s.end();
      });
    },
  };
};
