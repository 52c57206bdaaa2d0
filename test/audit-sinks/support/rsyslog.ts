import { existsSync } from "node:fs";
import { chmod, chown, copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Daemon, startDaemon } from "./daemon.ts";
import type { Pki } from "./pki.ts";

/** What the collector wrote for one message: the structured data and the MSG, BOM removed. */
export interface Received {
  readonly sd: string;
  readonly seq: number;
  readonly id: string;
  readonly msg: string;
}

export interface Rsyslog {
  readonly port: number;
  /** Where it writes what it receives. */
  readonly file: string;
  /** Process id of the running collector. */
  readonly pid: () => number | undefined;
  start(): Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
  received(): Promise<Received[]>;
}

/** Unprivileged account to run the collector as, via setpriv (which execs, so signals reach rsyslogd). */
export interface RunAs {
  readonly uid: number;
  readonly gid: number;
}

/**
 * Debian's rsyslogd with imtcp over the gtls driver, mutual TLS (x509/certvalid: the client must
 * present a certificate from our CA). No privDropTo* settings, so it runs as whoever starts it,
 * root or not, or as `runAs`; everything it touches is in its own folder under `dir`.
 */
export const rsyslogCollector = async (
  dir: string,
  pki: Pki,
  port: number,
  runAs?: RunAs,
): Promise<Rsyslog> => {
  const home = join(dir, `rsyslog-${port}`);
  const work = join(home, "work");
  const out = join(home, "received.log");
  const conf = join(home, "rsyslog.conf");
  await mkdir(work, { recursive: true });
  const serverCert = join(home, "server.pem");
  const serverKey = join(home, "server.key");
  await copyFile(pki.serverCert, serverCert);
  await copyFile(pki.serverKey, serverKey);
  if (runAs !== undefined) {
    await chmod(dir, 0o755);
    for (const p of [home, work, serverCert, serverKey]) await chown(p, runAs.uid, runAs.gid);
  }
  await writeFile(
    conf,
    [
      `global(workDirectory="${work}" maxMessageSize="256k"`,
      `  defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="${pki.ca}"`,
      `  defaultNetstreamDriverCertFile="${serverCert}" defaultNetstreamDriverKeyFile="${serverKey}")`,
      `module(load="imtcp" maxSessions="20" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")`,
      `input(type="imtcp" port="${port}" address="127.0.0.1")`,
      `template(name="audit" type="string" string="%structured-data%\\t%msg%\\n")`,
      `action(type="omfile" file="${out}" template="audit")`,
      "",
    ].join("\n"),
  );
  let daemon: Daemon | undefined;
  return {
    port,
    file: out,
    pid: () => daemon?.pid,
    start: async () => {
      const args = ["-n", "-f", conf, "-i", join(home, "rsyslogd.pid")];
      const [command, argv] =
        runAs === undefined
          ? ["rsyslogd", args]
          : [
              "setpriv",
              [`--reuid=${runAs.uid}`, `--regid=${runAs.gid}`, "--clear-groups", "rsyslogd", ...args],
            ];
      daemon = await startDaemon(command, argv, { host: "127.0.0.1", port });
    },
    stop: async (signal) => {
      await daemon?.stop(signal);
      daemon = undefined;
    },
    received: async () => {
      if (!existsSync(out)) return [];
      const text = await readFile(out, "utf8");
      return text
        .split("\n")
        .filter((l) => l !== "")
        .map((l) => {
          const tab = l.indexOf("\t");
          const sd = l.slice(0, tab);
          const m = /seq="(\d+)" id="((?:[^"\\]|\\.)*)"/.exec(sd);
          return {
            sd,
            seq: Number(m?.[1]),
            id: (m?.[2] ?? "").replace(/\\(.)/g, "$1"),
            msg: l.slice(tab + 1).replace(/^\uFEFF/, ""),
          };
        });
    },
  };
};
