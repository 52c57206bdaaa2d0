import { readFile, stat } from "node:fs/promises";
import { parseArgs } from "node:util";
import { isAuditError } from "../audit/AuditError.ts";
import { type HmacKey, loadHmacKey } from "../audit/HmacKey.ts";
import { readSegmentRecords } from "../audit/SegmentReader.ts";
import { type TrustedKey, trustedKeyFromPem } from "../audit/Signer.ts";
import { EXIT_CODE, type VerifyReport, verifyDirectory } from "../audit/verify.ts";

export interface AuditCommandIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

/** `audit` has its own usage exit code: 0..2 are verification outcomes. */
export const AUDIT_USAGE_EXIT = 3;

const USAGE = `usage: pgwarden audit verify DIR [--key HMACKEYFILE]... [--pubkey PEMFILE]... [--json]
       pgwarden audit show DIR [--session ID] [--identity NAME]

verify exit codes: 0 intact, 1 tampered, 2 incomplete (unsealed tail, missing segment or key),
3 usage. Without --key HMACs are not checked; without --pubkey signatures are not checked.
`;

const usage = (io: AuditCommandIo, message: string): number => {
  io.stderr.write(`pgwarden audit: ${message}\n${USAGE}`);
  return AUDIT_USAGE_EXIT;
};

const isDirectory = async (dir: string): Promise<boolean> => {
  try {
    return (await stat(dir)).isDirectory();
  } catch {
    return false;
  }
};

const formatReport = (r: VerifyReport): string => {
  const out = [
    `audit log ${r.status.toUpperCase()}: ${r.records} records in ${(r.elapsedMs / 1000).toFixed(2)} s`,
  ];
  for (const i of r.instances) {
    const range = i.firstSeq === undefined ? "" : `, seq ${i.firstSeq}..${i.lastSeq}`;
    out.push(
      `  instance ${i.instance}: ${i.records} records in ${i.segments} segments${range}, ${i.sealedSegments} sealed`,
    );
    for (const f of i.findings) {
      const where = [
        f.file,
        f.line === undefined ? "" : `line ${f.line}`,
        f.seq === undefined ? "" : `seq ${f.seq}`,
      ]
        .filter((x) => x !== "")
        .join(" ");
      out.push(`    ${f.class.toUpperCase()} ${where}: ${f.check}: ${f.message}`);
    }
  }
  if (r.instances.length === 0) out.push("  no segment files found");
  for (const u of r.unchecked)
    out.push(`  not checked: ${u === "hmac" ? "HMACs (no --key)" : "signatures (no --pubkey)"}`);
  return `${out.join("\n")}\n`;
};

const runVerify = async (args: string[], io: AuditCommandIo): Promise<number> => {
  let parsed: { values: { key?: string[]; pubkey?: string[]; json?: boolean }; positionals: string[] };
  try {
    parsed = parseArgs({
      args,
      options: {
        key: { type: "string", multiple: true },
        pubkey: { type: "string", multiple: true },
        json: { type: "boolean", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  const [dir, ...extra] = parsed.positionals;
  if (dir === undefined || extra.length > 0) return usage(io, "verify takes one directory");
  if (!(await isDirectory(dir))) return usage(io, `${dir}: not a directory`);
  const hmacKeys: HmacKey[] = [];
  for (const path of parsed.values.key ?? []) {
    const k = await loadHmacKey(path);
    if (isAuditError(k)) return usage(io, k.message);
    hmacKeys.push(k);
  }
  const trustedKeys: TrustedKey[] = [];
  for (const path of parsed.values.pubkey ?? []) {
    let pem: string;
    try {
      pem = await readFile(path, "utf8");
    } catch (e) {
      return usage(io, `${path}: ${(e as NodeJS.ErrnoException).code ?? "unreadable"}`);
    }
    const k = trustedKeyFromPem(pem, path);
    if (isAuditError(k)) return usage(io, k.message);
    trustedKeys.push(k);
  }
  const report = await verifyDirectory(dir, { hmacKeys, trustedKeys });
  io.stdout.write(parsed.values.json ? `${JSON.stringify(report)}\n` : formatReport(report));
  return EXIT_CODE[report.status];
};

const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);

/** One line of the timeline: what happened and how it ended, in words. */
const describe = (r: Readonly<Record<string, unknown>>): string => {
  const s = (k: string) => str(r[k]) ?? "";
  switch (r.kind) {
    case "connection.accepted":
      return `connection accepted (${s("transport")})`;
    case "connection.closed":
      return `connection closed: ${s("reason")} after ${r.durationMs} ms, ${r.clientBytesIn} bytes in, ${r.clientBytesOut} out`;
    case "tls.established":
      return `TLS ${s("version")} ${s("cipher")} on the ${s("leg")} leg${r.peerSubject ? `, peer ${s("peerSubject")}` : ""}${r.peerFingerprint ? ` (certificate sha256 ${s("peerFingerprint")})` : ""}`;
    case "tls.failure":
      return `TLS HANDSHAKE FAILED on the ${s("leg")} leg: ${s("reason")}`;
    case "auth.attempt":
      return `authentication attempt: ${s("method")} as ${s("user")}`;
    case "auth.success":
      return `authenticated: ${s("method")} as ${s("user")}`;
    case "auth.failure":
      return `AUTHENTICATION FAILED: ${s("method")}${r.user ? ` as ${s("user")}` : ""}: ${s("reason")}`;
    case "access.decision":
      return `access ${s("decision") === "deny" ? "DENIED" : "allowed"} by rule ${s("rule")}${r.reason ? `: ${s("reason")}` : ""}`;
    case "transition":
      return `${s("machine")} ${s("from")} → ${s("to")} on ${s("cause")}`;
    case "pool.checkout":
      return `server connection ${s("server")} checked out of ${s("pool")} (${s("mode")} mode) after waiting ${r.waitMs} ms`;
    case "pool.release":
      return `server connection ${s("server")} released to ${s("pool")} (${s("reason")})${r.heldMs === undefined ? "" : ` after ${r.heldMs} ms`}`;
    case "statement": {
      const what = str(r.text) ?? (r.fingerprint ? `fingerprint ${s("fingerprint")}` : "(text not recorded)");
      const outcome =
        r.outcome === "ok"
          ? `${s("commandTag") || "ok"}${r.rows === undefined ? "" : `, ${r.rows} rows`}`
          : `${String(r.outcome).toUpperCase()} ${s("sqlstate")}`;
      return `${s("message")}: ${what} → ${outcome}${r.durationMs === undefined ? "" : ` (${r.durationMs} ms)`}`;
    }
    default:
      return String(r.kind);
  }
};

const runShow = async (args: string[], io: AuditCommandIo): Promise<number> => {
  let parsed: { values: { session?: string; identity?: string }; positionals: string[] };
  try {
    parsed = parseArgs({
      args,
      options: { session: { type: "string" }, identity: { type: "string" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  const [dir, ...extra] = parsed.positionals;
  if (dir === undefined || extra.length > 0) return usage(io, "show takes one directory");
  if (!(await isDirectory(dir))) return usage(io, `${dir}: not a directory`);
  const { session, identity } = parsed.values;
  // Sessions in order of first appearance; a session matches --identity once any record names it.
  const sessions = new Map<
    string,
    { who: Record<string, string>; lines: string[]; identities: Set<string> }
  >();
  for await (const { record: r } of readSegmentRecords(dir)) {
    const id = str(r.session);
    if (id === undefined || (session !== undefined && id !== session)) continue;
    const key = `${String(r.instance)}/${id}`;
    let s = sessions.get(key);
    if (s === undefined) {
      s = { who: {}, lines: [], identities: new Set() };
      sessions.set(key, s);
    }
    for (const k of ["identity", "source", "database", "role"] as const) {
      const v = str(r[k]);
      if (v !== undefined) s.who[k] = v;
    }
    if (str(r.identity) !== undefined) s.identities.add(str(r.identity)!);
    s.lines.push(`  ${str(r.ts)}  #${String(r.seq)}  ${describe(r)}`);
    // Transitions folded into a statement record, each at its own time.
    if (Array.isArray(r.transitions))
      for (const t of r.transitions as Record<string, unknown>[])
        s.lines.push(`  ${str(t.ts)}      ${describe({ ...t, kind: "transition" })}`);
  }
  let shown = 0;
  for (const [key, s] of sessions) {
    if (identity !== undefined && !s.identities.has(identity)) continue;
    shown++;
    const w = s.who;
    io.stdout.write(
      `session ${key}: ${w.identity ?? "(unauthenticated)"} from ${w.source ?? "?"}` +
        `${w.database ? ` to database ${w.database}` : ""}${w.role ? ` as role ${w.role}` : ""}\n${s.lines.join("\n")}\n\n`,
    );
  }
  if (shown === 0) io.stdout.write("no matching session\n");
  return 0;
};

export const runAuditCommand = async (args: string[], io: AuditCommandIo): Promise<number> => {
  const [sub, ...rest] = args;
  switch (sub) {
    case "verify":
      return runVerify(rest, io);
    case "show":
      return runShow(rest, io);
    case "--help":
    case "-h":
      io.stdout.write(USAGE);
      return 0;
    default:
      return usage(io, sub === undefined ? "missing subcommand" : `unknown subcommand '${sub}'`);
  }
};
