import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { answerAdminQuery, type ShowTarget, showFields } from "../../src/admin/commands.ts";
import { isPgwardenError } from "../../src/errors.ts";
import {
  decodeDataRow,
  decodeFields,
  encodeRowDescription,
  type FieldDescription,
} from "../../src/protocol/backend.ts";
import { encodeParse, encodeQuery } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { pgbouncerBinary, type RunningPgbouncer, startPgbouncer } from "../support/pgbouncer.ts";
import { splitMessages, WireClient } from "../support/wire.ts";
import { startConsole, type TestConsole } from "./console.ts";
import { sampleSource } from "./fixtures.ts";

/**
 * The console's RowDescriptions against a real PgBouncer's, byte for byte. pgwarden follows
 * PgBouncer 1.24/1.25; an older PgBouncer lacks the columns added since, listed below from its
 * source at each release tag, so the comparison drops those (and undoes one rename) first.
 */

const binary = pgbouncerBinary();
type Version = readonly [number, number];

/** Column → the first PgBouncer release that sends it. */
const added: Partial<Record<ShowTarget, Record<string, Version>>> = {
  pools: { load_balance_hosts: [1, 24] },
  clients: { prepared_statements: [1, 21], replication: [1, 23], id: [1, 24] },
  servers: { prepared_statements: [1, 21], replication: [1, 23], id: [1, 24] },
  stats: {
    total_server_assignment_count: [1, 23],
    avg_server_assignment_count: [1, 23],
    total_client_parse_count: [1, 24],
    total_server_parse_count: [1, 24],
    total_bind_count: [1, 24],
    avg_client_parse_count: [1, 24],
    avg_server_parse_count: [1, 24],
    avg_bind_count: [1, 24],
  },
  stats_totals: {
    server_assignment_count: [1, 23],
    client_parse_count: [1, 24],
    server_parse_count: [1, 24],
    bind_count: [1, 24],
  },
  stats_averages: {
    server_assignment_count: [1, 23],
    avg_client_parse_count: [1, 24],
    avg_server_parse_count: [1, 24],
    avg_bind_count: [1, 24],
  },
  databases: {
    server_lifetime: [1, 23],
    load_balance_hosts: [1, 24],
    max_client_connections: [1, 24],
    current_client_connections: [1, 24],
  },
};
/** Column → its name before the release that renamed it. */
const renamed: Partial<Record<ShowTarget, Record<string, { until: Version; was: string }>>> = {
  databases: { reserve_pool_size: { until: [1, 24], was: "reserve_pool" } },
};
const listsAdded: Record<string, Version> = { peers: [1, 19], peer_pools: [1, 19] };

const before = (v: Version, w: Version) => v[0] < w[0] || (v[0] === w[0] && v[1] < w[1]);

/** pgwarden's columns as a PgBouncer of version `v` would send them. */
const fieldsAt = (what: ShowTarget, v: Version): FieldDescription[] =>
  showFields(what)
    .filter((f) => {
      const since = added[what]?.[f.name];
      return since === undefined || !before(v, since);
    })
    .map((f) => {
      const r = renamed[what]?.[f.name];
      return r !== undefined && before(v, r.until) ? { ...f, name: r.was } : f;
    });

const compared: ShowTarget[] = [
  "pools",
  "clients",
  "servers",
  "stats",
  "stats_totals",
  "stats_averages",
  "databases",
  "lists",
  "config",
  "version",
];

const adminStartup = (database: string) =>
  encodeStartup(
    new Map([
      ["user", "admin"],
      ["database", database],
    ]),
  );

const ask = async (w: WireClient, sql: string) => {
  const from = w.received.length;
  const readies = () => w.messages(from).filter((m) => m.type === "Z").length;
  w.send(encodeQuery(sql));
  await w.until(() => readies() === 1, 5000, `the answer to ${sql}`);
  return w.messages(from);
};

const fieldsOf = (m: { msg: Buffer }) => {
  const f = decodeFields(m.msg);
  if (isPgwardenError(f)) throw new Error(f.message);
  return f;
};

describe.skipIf(binary === undefined)("layout against the installed PgBouncer", () => {
  let pgbouncer: RunningPgbouncer | undefined;
  let version: Version;
  let bouncer: WireClient;
  let ours: TestConsole;
  let mine: WireClient;

  beforeAll(async () => {
    // PgBouncer's own console is compared, so its one database is never connected to.
    pgbouncer = await startPgbouncer({
      users: [{ name: "admin", password: "admin" }],
      settings: { admin_users: "admin" },
    });
    version = [pgbouncer.version[0]!, pgbouncer.version[1]!];
    bouncer = await WireClient.open(pgbouncer.port);
    bouncer.send(adminStartup("pgbouncer"));
    await bouncer.until((w) => w.messages().some((m) => m.type === "Z"), 5000, "PgBouncer's welcome");
    ours = await startConsole(sampleSource());
    mine = await WireClient.open(ours.port);
    mine.send(adminStartup("pgwarden"));
    await mine.until((w) => w.messages().some((m) => m.type === "Z"), 5000, "our welcome");
  });

  afterAll(async () => {
    bouncer?.close();
    mine?.close();
    await ours?.close();
    await pgbouncer?.stop();
  });

  it.each(compared)("SHOW %s: the same RowDescription bytes", async (what) => {
    const theirs = (await ask(bouncer, `SHOW ${what.toUpperCase()}`))[0]!;
    expect(theirs.type).toBe("T");
    const expected = encodeRowDescription(fieldsAt(what, version));
    expect(theirs.msg.toString("hex")).toBe(expected.toString("hex"));
  });

  it("SHOW LISTS: the same list names in the same order", async () => {
    const names = (msgs: { type: string; msg: Buffer }[]) =>
      msgs
        .filter((m) => m.type === "D")
        .map((m) => {
          const row = decodeDataRow(m.msg);
          if (isPgwardenError(row)) throw new Error(row.message);
          return row[0]!.toString();
        });
    const ourNames = names(splitMessages(Buffer.concat(answerAdminQuery("SHOW LISTS", sampleSource()))));
    const theirNames = names(await ask(bouncer, "SHOW LISTS"));
    expect(theirNames).toEqual(
      ourNames.filter((n) => listsAdded[n] === undefined || !before(version, listsAdded[n]!)),
    );
  });

  it("timestamps and flags are written the same way", async () => {
    const row = (await ask(bouncer, "SHOW CLIENTS")).find((m) => m.type === "D")!;
    const values = decodeDataRow(row.msg);
    if (isPgwardenError(values)) throw new Error(values.message);
    const names = fieldsAt("clients", version).map((f) => f.name);
    const theirs = Object.fromEntries(names.map((n, i) => [n, values[i]?.toString() ?? null]));
    const ourRow = splitMessages(Buffer.concat(answerAdminQuery("SHOW CLIENTS", sampleSource()))).find(
      (m) => m.type === "D",
    )!;
    const ourValues = decodeDataRow(ourRow.msg);
    if (isPgwardenError(ourValues)) throw new Error(ourValues.message);
    const timestamp = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+$/;
    expect(theirs.connect_time).toMatch(timestamp);
    expect(ourValues[9]!.toString()).toMatch(timestamp);
    expect(theirs.close_needed).toBe("0");
    expect(theirs.ptr).toMatch(/^0x[0-9a-f]+$/);
    expect(ourValues[14]!.toString()).toMatch(/^0x[0-9a-f]+$/);
  });

  it("the welcome carries PgBouncer's parameters, then BackendKeyData and ReadyForQuery", () => {
    const welcome = (w: WireClient) => {
      const all = w.messages();
      return all.slice(0, all.findIndex((m) => m.type === "Z") + 1);
    };
    const names = (w: WireClient) =>
      welcome(w)
        .filter((m) => m.type === "S")
        .map((m) => m.msg.subarray(5).toString().split("\0")[0]);
    expect(names(mine)).toEqual(expect.arrayContaining(names(bouncer)));
    for (const w of [bouncer, mine]) {
      const types = welcome(w).map((m) => m.type);
      expect([types[0], ...types.slice(-2)]).toEqual(["R", "K", "Z"]);
    }
  });

  it("an unknown command: the same wording, each followed by ReadyForQuery", async () => {
    const theirs = await ask(bouncer, "bogus stuff;");
    const mineAnswer = await ask(mine, "bogus stuff;");
    expect(theirs.map((m) => m.type)).toEqual(["E", "Z"]);
    expect(mineAnswer.map((m) => m.type)).toEqual(["E", "Z"]);
    expect(fieldsOf(mineAnswer[0]!).get("M")).toBe(fieldsOf(theirs[0]!).get("M"));
    // Deliberate difference: PgBouncer says 08P01 (a connection error to most drivers), we say 42601.
    expect(fieldsOf(theirs[0]!).get("C")).toBe("08P01");
    expect(fieldsOf(mineAnswer[0]!).get("C")).toBe("42601");
  });

  it("the extended protocol: the same refusal, then the connection ends", async () => {
    const refusal = async (p: number, database: string) => {
      const w = await WireClient.open(p);
      w.send(adminStartup(database));
      await w.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "the welcome");
      const from = w.received.length;
      w.send(encodeParse({ name: "", query: "SHOW POOLS", paramTypes: [] }));
      await w.waitClosed();
      return w
        .messages(from)
        .filter((m) => m.type === "E")
        .map((m) => fieldsOf(m).get("M"))[0];
    };
    expect(await refusal(ours.port, "pgwarden")).toBe(await refusal(pgbouncer!.port, "pgbouncer"));
  });
});
