import type { TransactionStatus } from "../protocol/backend.ts";
import { quoteIdent, quoteLiteral } from "../sql/quote.ts";
import type { PinReason, SessionEffect, StatementEffects } from "../sql/sessionEffects.ts";

/**
 * The session settings (GUCs) of one client or one server connection, as far as pgwarden can
 * know them: SET/RESET effects the client ran, kept only once their transaction commits, and
 * every value PostgreSQL reports in ParameterStatus. A missing name means the server default.
 */

/** A value as SQL text for `SET name TO …` (from a SET), or as the raw string (from the server). */
export type GucValue =
  | { readonly form: "sql"; readonly text: string }
  | { readonly form: "raw"; readonly text: string };

export type GucMap = ReadonlyMap<string, GucValue>;

/** Reported parameters no session can change: never tracked, never replayed. */
const NOT_SETTABLE = new Set([
  "server_version",
  "server_encoding",
  "integer_datetimes",
  "is_superuser",
  "in_hot_standby",
]);
/** Settings pgwarden must not replay: identity changes pin instead (see sessionEffects). */
const NEVER_REPLAYED = new Set(["session_authorization", "role"]);

const tracked = (name: string): boolean => !NOT_SETTABLE.has(name) && !NEVER_REPLAYED.has(name);

type Staged =
  | { readonly kind: "effect"; readonly effect: SessionEffect }
  | { readonly kind: "savepoint"; readonly name: string };

interface Transaction {
  /** Opened by BEGIN (or seen in ReadyForQuery 'T'), as opposed to a single statement's own. */
  explicit: boolean;
  failed: boolean;
  staged: Staged[];
}

// DISCARD ALL ends everything that pins except a loaded library, which stays loaded.
const SURVIVES_DISCARD_ALL: ReadonlySet<PinReason> = new Set(["load"]);

const NO_PINS: Set<PinReason> = new Set();
const NOTHING_AWAITED: (readonly SessionEffect[])[] = [];

/** Tags name a content of the settings: two states with one tag hold the same values. */
let lastTag = 0;

/** Settings as startup packets gave them, by content: what `fromStartup` shares. */
const startupStates = new Map<string, { readonly values: Map<string, GucValue>; readonly tag: number }>();
const MAX_STARTUP_STATES = 256;

export class SessionState {
  private values = new Map<string, GucValue>();
  /** The map is also another state's (adoptFrom): copied before the first change. */
  private shared = false;
  private tag = ++lastTag;

  private own(): Map<string, GucValue> {
    if (this.shared) {
      this.values = new Map(this.values);
      this.shared = false;
    }
    return this.values;
  }
  // Both empty for nearly every state (thousands of idle sessions): shared until first used.
  private pinSet: Set<PinReason> = NO_PINS;
  private awaiting: (readonly SessionEffect[])[] = NOTHING_AWAITED;
  private txn: Transaction | undefined;

  /**
   * Raw values a client gave in its startup packet (application_name, options' -c settings).
   * Clients that start alike share one map (copied on their first change) and one tag.
   */
  static fromStartup(params: Readonly<Record<string, string>>): SessionState {
    const s = new SessionState();
    let key = "";
    for (const [name, value] of Object.entries(params)) {
      const n = name.toLowerCase();
      if (!tracked(n)) continue;
      s.values.set(n, { form: "raw", text: value });
      key += `${n}\u0000${value}\u0000`;
    }
    const known = startupStates.get(key);
    if (known !== undefined) {
      s.values = known.values;
      s.tag = known.tag;
    } else if (startupStates.size < MAX_STARTUP_STATES)
      startupStates.set(key, { values: s.values, tag: s.tag });
    else return s;
    s.shared = true;
    return s;
  }

  /** The settings as they are outside any open transaction's uncommitted SETs. */
  get settings(): GucMap {
    return new Map(this.values);
  }

  /** The same settings without a copy: for comparing and replaying on the hot path; do not keep it. */
  get current(): GucMap {
    return this.values;
  }

  get pins(): ReadonlySet<PinReason> {
    return new Set(this.pinSet);
  }

  get pinned(): boolean {
    return this.pinSet.size > 0;
  }

  /** Holds the same settings as `other` without comparing them: one adopted the other's unchanged. */
  sameAs(other: SessionState): boolean {
    return this.tag === other.tag;
  }

  /** Takes `other`'s settings (a server connection after its client's turn); cheap when they already agree. */
  adoptFrom(other: SessionState): void {
    if (this.tag === other.tag) return;
    // Shared until either side changes: thousands of idle clients with the same settings hold one map.
    this.values = other.values;
    this.shared = true;
    other.shared = true;
    this.tag = other.tag;
  }

  /** Replaces the settings with another state's (a server connection after its client's turn). */
  adopt(settings: GucMap): void {
    if (settings === this.values || sameSettings(settings, this.values)) return;
    this.values = new Map(settings);
    this.shared = false;
    this.tag = ++lastTag;
  }

  /** Inside a transaction block (the last ReadyForQuery said `T` or `E`). */
  get inTransaction(): boolean {
    return this.txn !== undefined;
  }

  /** A query was sent: one entry per statement, matched in order by CommandComplete. */
  queue(statements: StatementEffects): void {
    if (this.awaiting === NOTHING_AWAITED) this.awaiting = [];
    this.awaiting.push(...statements);
  }

  onCommandComplete(): void {
    const effects = this.awaiting.shift();
    if (effects === undefined) return;
    for (const e of effects) this.apply(e);
  }

  /** An ErrorResponse: the statements after the failing one never run. */
  onError(): void {
    this.awaiting = NOTHING_AWAITED;
    if (this.txn === undefined) return;
    if (this.txn.explicit) this.txn.failed = true;
    else this.txn = undefined;
  }

  /** The server reports the value in force; it supersedes what SETs in this transaction said. */
  onParameterStatus(name: string, value: string): void {
    const n = name.toLowerCase();
    if (!tracked(n)) return;
    this.own().set(n, { form: "raw", text: value });
    this.tag = ++lastTag;
    if (this.txn !== undefined) {
      this.txn.staged = this.txn.staged.filter((s) => s.kind !== "effect" || nameOf(s.effect) !== n);
    }
  }

  onReadyForQuery(status: TransactionStatus): void {
    this.awaiting = NOTHING_AWAITED;
    if (status === "I") {
      if (this.txn !== undefined && !this.txn.failed) this.commitStaged(this.txn.staged);
      this.txn = undefined;
      return;
    }
    this.txn ??= { explicit: true, failed: false, staged: [] };
    this.txn.explicit = true;
    if (status === "E") this.txn.failed = true;
  }

  private apply(e: SessionEffect): void {
    if (e.kind === "pin") {
      // Pinned at once and kept even if the transaction rolls back: the safe side.
      if (this.pinSet === NO_PINS) this.pinSet = new Set();
      this.pinSet.add(e.reason);
      return;
    }
    if (e.kind === "txn") {
      this.transactionControl(e.op, e.savepoint, e.chain === true);
      return;
    }
    this.txn ??= { explicit: false, failed: false, staged: [] };
    this.txn.staged.push({ kind: "effect", effect: e });
  }

  private transactionControl(op: string, savepoint: string | undefined, chain: boolean): void {
    const t = this.txn;
    switch (op) {
      case "begin":
        if (t === undefined) this.txn = { explicit: true, failed: false, staged: [] };
        else t.explicit = true;
        return;
      case "commit":
      case "rollback":
        if (t !== undefined && op === "commit" && !t.failed) this.commitStaged(t.staged);
        this.txn = chain ? { explicit: true, failed: false, staged: [] } : undefined;
        return;
      case "savepoint":
        t?.staged.push({ kind: "savepoint", name: savepoint ?? "" });
        return;
      case "rollbackTo":
      case "release": {
        if (t === undefined) return;
        const at = t.staged.findLastIndex((s) => s.kind === "savepoint" && s.name === savepoint);
        if (at < 0) return;
        if (op === "rollbackTo") {
          t.staged.length = at + 1;
          t.failed = false;
        } else {
          // RELEASE keeps the effects but forgets this savepoint and those opened after it.
          t.staged = t.staged.filter((s, i) => i < at || s.kind === "effect");
        }
        return;
      }
    }
  }

  private commitStaged(staged: readonly Staged[]): void {
    for (const s of staged) if (s.kind === "effect") this.commitEffect(s.effect);
  }

  private commitEffect(e: SessionEffect): void {
    switch (e.kind) {
      case "set":
      case "setRaw":
        if (tracked(e.name))
          this.own().set(e.name, { form: e.kind === "set" ? "sql" : "raw", text: e.value });
        this.tag = ++lastTag;
        return;
      case "reset":
        this.own().delete(e.name);
        this.tag = ++lastTag;
        return;
      case "resetAll":
        this.own().clear();
        this.tag = ++lastTag;
        return;
      case "discardAll":
        this.own().clear();
        this.tag = ++lastTag;
        for (const r of [...this.pinSet]) if (!SURVIVES_DISCARD_ALL.has(r)) this.pinSet.delete(r);
        return;
      case "discard":
        if (e.what === "temp") this.pinSet.delete("temp-table");
        return;
      case "deallocate":
        if (e.all) this.pinSet.delete("sql-prepare");
        return;
      case "unpin":
        this.pinSet.delete(e.reason);
        return;
      default:
        return;
    }
  }
}

const nameOf = (e: SessionEffect): string | undefined =>
  e.kind === "set" || e.kind === "setRaw" || e.kind === "reset" ? e.name : undefined;

const sameSettings = (a: GucMap, b: GucMap): boolean => {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (!sameValue(v, b.get(k))) return false;
  return true;
};

const sameValue = (a: GucValue | undefined, b: GucValue | undefined): boolean =>
  a === b || (a !== undefined && b !== undefined && a.form === b.form && a.text === b.text);

// `SET TIME ZONE` is the only form that accepts the INTERVAL values a SET TIME ZONE can store.
const setSql = (name: string, text: string): string =>
  name === "timezone" ? `SET TIME ZONE ${text}` : `SET ${quoteIdent(name)} TO ${text}`;

// set_config takes the raw string, so list settings (search_path) keep their inner quoting.
const setConfigSql = (name: string, text: string): string =>
  `pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(text)}, false)`;

/**
 * One simple-query string that turns a server connection holding `server` into one holding
 * `client`, or "" when they already agree. RESETs first, then SETs, in name order.
 */
export const replaySql = (client: GucMap, server: GucMap): string => {
  if (sameSettings(client, server)) return "";
  const resets: string[] = [];
  const sets: string[] = [];
  const raws: string[] = [];
  const names = [...new Set([...client.keys(), ...server.keys()])].sort();
  for (const name of names) {
    const want = client.get(name);
    if (sameValue(want, server.get(name))) continue;
    if (want === undefined) resets.push(`RESET ${quoteIdent(name)}`);
    else if (want.form === "sql") sets.push(setSql(name, want.text));
    else raws.push(setConfigSql(name, want.text));
  }
  const statements = [...resets, ...sets];
  if (raws.length > 0) statements.push(`SELECT ${raws.join(", ")}`);
  return statements.join("; ");
};

/**
 * The replay as queries to run in order. PostgreSQL reads a whole query string in the
 * client_encoding in force when it arrives, so a change of client_encoding goes alone, first:
 * the rest then reaches the server in the encoding the client's own bytes use.
 */
export const replayQueries = (client: GucMap, server: GucMap): string[] => {
  const sql = replaySql(client, server);
  if (sql === "") return [];
  const want = client.get("client_encoding");
  if (sameValue(want, server.get("client_encoding"))) return [sql];
  const first =
    want === undefined
      ? "RESET client_encoding"
      : want.form === "sql"
        ? setSql("client_encoding", want.text)
        : `SELECT ${setConfigSql("client_encoding", want.text)}`;
  const after = new Map(server);
  if (want === undefined) after.delete("client_encoding");
  else after.set("client_encoding", want);
  const rest = replaySql(client, after);
  return rest === "" ? [first] : [first, rest];
};
