import { nodeOf, type RawNode } from "./nodes.ts";
import type { ParseOutcome, SqlParser } from "./parser.ts";
import { quoteLiteral } from "./quote.ts";

/**
 * What a query does to the state of the PostgreSQL session that runs it, read from the real
 * parse tree. Transaction mode needs this to replay a client's settings on another server
 * connection, and to know when a client must keep (pin) its server connection.
 */

/** Why a server connection must stay with one client: state that cannot be replayed elsewhere. */
export type PinReason =
  | "listen"
  | "advisory-lock"
  | "temp-table"
  | "with-hold-cursor"
  | "sql-prepare"
  | "load"
  | "session-authorization"
  /** set_config(…, false) whose name or value is not a constant: its value is unknown. */
  | "dynamic-set-config"
  /** standard_conforming_strings off: the parser (which assumes on) would misread later literals. */
  | "escape-string-syntax";

export type TxnOp = "begin" | "commit" | "rollback" | "savepoint" | "release" | "rollbackTo";

export type SessionEffect =
  /** `SET name TO <value>`: value is SQL text that, after `SET name TO`, sets the same value. */
  | { readonly kind: "set"; readonly name: string; readonly value: string }
  /** `set_config(name, value, false)`: value is the raw GUC string, as current_setting shows it. */
  | { readonly kind: "setRaw"; readonly name: string; readonly value: string }
  | { readonly kind: "reset"; readonly name: string }
  | { readonly kind: "resetAll" }
  | { readonly kind: "pin"; readonly reason: PinReason }
  /** UNLISTEN *, CLOSE ALL, pg_advisory_unlock_all(): what pinned may no longer need to. */
  | { readonly kind: "unpin"; readonly reason: "listen" | "with-hold-cursor" | "advisory-lock" }
  | { readonly kind: "discardAll" }
  | { readonly kind: "discard"; readonly what: "plans" | "sequences" | "temp" }
  | { readonly kind: "deallocate"; readonly all: true }
  | { readonly kind: "deallocate"; readonly all: false; readonly name: string }
  /** Transaction control: session SETs only last if their transaction commits. */
  | { readonly kind: "txn"; readonly op: TxnOp; readonly savepoint?: string; readonly chain?: boolean };

/** The effects of each statement, in order: index i belongs to the i-th CommandComplete. */
export type StatementEffects = readonly (readonly SessionEffect[])[];

type Fields = Readonly<Record<string, unknown>>;

const isObject = (u: unknown): u is Fields => typeof u === "object" && u !== null;
const field = (o: Fields, k: string): Fields => (isObject(o[k]) ? (o[k] as Fields) : {});
const str = (o: Fields, k: string): string | undefined =>
  typeof o[k] === "string" ? (o[k] as string) : undefined;
const list = (o: Fields, k: string): readonly RawNode[] =>
  Array.isArray(o[k]) ? (o[k] as readonly RawNode[]) : [];

// libpg_query leaves out fields at their zero value, so an absent ival is 0 and an absent boolval false.
const constantOf = (n: RawNode): { text: string; sval?: string; bool?: boolean } | undefined => {
  const [type, c] = nodeOf(n);
  if (type !== "A_Const" || c.isnull === true) return undefined;
  if ("sval" in c) {
    const s = str(field(c, "sval"), "sval") ?? "";
    return { text: quoteLiteral(s), sval: s };
  }
  if ("ival" in c) return { text: String(field(c, "ival").ival ?? 0) };
  if ("fval" in c) return { text: str(field(c, "fval"), "fval") ?? "0" };
  if ("boolval" in c) {
    const b = field(c, "boolval").boolval === true;
    return { text: b ? "true" : "false", bool: b };
  }
  return undefined;
};

const INTERVAL_FULL_RANGE = 0x7fff;
// The grammar only lets SET TIME ZONE take these interval field sets.
const INTERVAL_FIELDS: ReadonlyMap<number, string> = new Map([
  [INTERVAL_FULL_RANGE, ""],
  [1 << 10, " HOUR"],
  [(1 << 10) | (1 << 11), " HOUR TO MINUTE"],
]);

const intervalText = (n: RawNode): string | undefined => {
  const [type, tc] = nodeOf(n);
  if (type !== "TypeCast") return undefined;
  const lit = constantOf(field(tc, "arg") as RawNode);
  const typeName = field(tc, "typeName");
  const names = list(typeName, "names").map((x) => str(field(x, "String"), "sval"));
  if (lit?.sval === undefined || names[names.length - 1] !== "interval") return undefined;
  const mods = list(typeName, "typmods").map((m) => Number(field(field(m, "A_Const"), "ival").ival ?? 0));
  const fields = INTERVAL_FIELDS.get(mods[0] ?? INTERVAL_FULL_RANGE);
  if (fields === undefined) return undefined;
  const precision = mods[1] === undefined ? "" : `(${mods[1]})`;
  return `INTERVAL${precision} ${lit.text}${fields}`;
};

/** SQL text for a SET value list, or undefined for a shape this module does not know. */
const valueText = (args: readonly RawNode[]): string | undefined => {
  const parts: string[] = [];
  for (const a of args) {
    const t = constantOf(a)?.text ?? intervalText(a);
    if (t === undefined) return undefined;
    parts.push(t);
  }
  return parts.length === 0 ? undefined : parts.join(", ");
};

// Settings whose SET only affects the current transaction even without LOCAL.
const TRANSACTION_SCOPED = new Set([
  "transaction_isolation",
  "transaction_read_only",
  "transaction_deferrable",
]);
const AUTHORIZATION = new Set(["role", "session_authorization"]);
// SET SESSION CHARACTERISTICS AS TRANSACTION … sets these session defaults.
const CHARACTERISTICS: Readonly<Record<string, string>> = {
  transaction_isolation: "default_transaction_isolation",
  transaction_read_only: "default_transaction_read_only",
  transaction_deferrable: "default_transaction_deferrable",
};

const ON = new Set(["on", "true", "yes", "1"]);
const isOn = (args: readonly RawNode[]): boolean => {
  const c = args.length === 1 ? constantOf(args[0]!) : undefined;
  return c !== undefined && ON.has((c.sval ?? c.text).toLowerCase());
};

/**
 * A search_path naming pg_temp can make an unqualified CREATE a temporary object, even with SET
 * LOCAL (the object outlives the transaction): such a session keeps its server connection.
 */
const PG_TEMP = /(?:^|[\s,"'])pg_temp(?:[\s,"']|$)/i;
const tempSearchPath = (name: string, value: string | undefined): boolean =>
  name === "search_path" && value !== undefined && PG_TEMP.test(value);
const TEMP_PIN: SessionEffect = { kind: "pin", reason: "temp-table" };

const variableSet = (s: Fields): SessionEffect[] => {
  const kind = str(s, "kind");
  if (kind === "VAR_RESET_ALL") return [{ kind: "resetAll" }];
  const name = (str(s, "name") ?? "").toLowerCase();
  if (kind === "VAR_SET_VALUE" && tempSearchPath(name, valueText(list(s, "args")))) {
    const value = valueText(list(s, "args"))!;
    return s.is_local === true ? [TEMP_PIN] : [TEMP_PIN, { kind: "set", name, value }];
  }
  if (s.is_local === true) return [];
  if (kind === "VAR_SET_MULTI") {
    if (name !== "session characteristics") return [];
    return list(s, "args").flatMap((d): SessionEffect[] => {
      const def = field(d, "DefElem");
      const target = CHARACTERISTICS[str(def, "defname") ?? ""];
      const value = constantOf(field(def, "arg") as RawNode)?.text;
      if (target === undefined || value === undefined) return [];
      return [{ kind: "set", name: target, value }];
    });
  }
  if (AUTHORIZATION.has(name)) return [{ kind: "pin", reason: "session-authorization" }];
  if (TRANSACTION_SCOPED.has(name)) return [];
  if (name === "standard_conforming_strings" && !(kind === "VAR_SET_VALUE" && isOn(list(s, "args")))) {
    return [{ kind: "pin", reason: "escape-string-syntax" }];
  }
  switch (kind) {
    case "VAR_SET_VALUE": {
      const value = valueText(list(s, "args"));
      // A value that cannot be rendered back cannot be replayed: keep the server connection.
      return value === undefined
        ? [{ kind: "pin", reason: "dynamic-set-config" }]
        : [{ kind: "set", name, value }];
    }
    case "VAR_SET_DEFAULT":
    case "VAR_RESET":
      return [{ kind: "reset", name }];
    default:
      // VAR_SET_CURRENT (SET x FROM CURRENT) keeps the value it already has.
      return [];
  }
};

const TXN_OPS: Readonly<Record<string, TxnOp>> = {
  TRANS_STMT_BEGIN: "begin",
  TRANS_STMT_START: "begin",
  TRANS_STMT_COMMIT: "commit",
  // PREPARE TRANSACTION ends the transaction for this session, keeping its SETs as COMMIT would.
  TRANS_STMT_PREPARE: "commit",
  TRANS_STMT_ROLLBACK: "rollback",
  TRANS_STMT_SAVEPOINT: "savepoint",
  TRANS_STMT_RELEASE: "release",
  TRANS_STMT_ROLLBACK_TO: "rollbackTo",
};

const transaction = (s: Fields): SessionEffect[] => {
  const op = TXN_OPS[str(s, "kind") ?? ""];
  if (op === undefined) return [];
  const savepoint = str(s, "savepoint_name");
  return [
    {
      kind: "txn",
      op,
      ...(savepoint === undefined ? {} : { savepoint }),
      ...(s.chain === true ? { chain: true } : {}),
    },
  ];
};

const ADVISORY_SESSION_LOCKS = new Set([
  "pg_advisory_lock",
  "pg_advisory_lock_shared",
  "pg_try_advisory_lock",
  "pg_try_advisory_lock_shared",
]);

// Definitions store expressions without running them; walking into them would pin for nothing.
const NOT_EXECUTED = new Set(["CreateFunctionStmt", "ViewStmt", "RuleStmt", "CreateTrigStmt", "PrepareStmt"]);

const funcName = (f: Fields): { schema?: string; name: string } => {
  const parts = list(f, "funcname").map((p) => str(field(p, "String"), "sval") ?? "");
  const name = parts[parts.length - 1] ?? "";
  return parts.length > 1 ? { schema: parts[parts.length - 2]!, name } : { name };
};

const setConfigCall = (f: Fields): SessionEffect[] => {
  const [nameArg, valueArg, localArg] = list(f, "args").map(constantOf);
  if (tempSearchPath(nameArg?.sval?.toLowerCase() ?? "", valueArg?.sval)) {
    const set: SessionEffect[] =
      localArg?.bool === false ? [{ kind: "setRaw", name: "search_path", value: valueArg!.sval! }] : [];
    return [TEMP_PIN, ...set];
  }
  if (localArg?.bool === true) return [];
  if (nameArg?.sval === undefined || valueArg?.sval === undefined || localArg?.bool !== false) {
    return [{ kind: "pin", reason: "dynamic-set-config" }];
  }
  const name = nameArg.sval.toLowerCase();
  if (AUTHORIZATION.has(name)) return [{ kind: "pin", reason: "session-authorization" }];
  if (TRANSACTION_SCOPED.has(name)) return [];
  return [{ kind: "setRaw", name, value: valueArg.sval }];
};

/** Effects hidden in expressions anywhere in a statement: function calls, TEMP creation targets. */
const deepEffects = (stmt: Fields): SessionEffect[] => {
  const out: SessionEffect[] = [];
  const visit = (u: unknown): void => {
    if (Array.isArray(u)) {
      for (const x of u) visit(x);
      return;
    }
    if (!isObject(u)) return;
    for (const k in u) {
      if (NOT_EXECUTED.has(k)) continue;
      const v = u[k];
      if (k === "FuncCall" && isObject(v)) {
        const fn = funcName(v);
        if (fn.schema === undefined || fn.schema === "pg_catalog") {
          if (ADVISORY_SESSION_LOCKS.has(fn.name)) out.push({ kind: "pin", reason: "advisory-lock" });
          if (fn.name === "set_config") out.push(...setConfigCall(v));
          if (fn.name === "pg_advisory_unlock_all") out.push({ kind: "unpin", reason: "advisory-lock" });
        }
      }
      // Only the RangeVar a statement creates can carry persistence 't' (CREATE TEMP, SELECT INTO TEMP).
      if (isObject(v) && v.relpersistence === "t") out.push({ kind: "pin", reason: "temp-table" });
      visit(v);
    }
  };
  visit(stmt);
  return out;
};

/** The RangeVar or name list an object-creating statement names, to spot an explicit pg_temp schema. */
const createdInPgTemp = (type: string, s: Fields): boolean => {
  const target: Readonly<Record<string, () => Fields>> = {
    CreateStmt: () => field(s, "relation"),
    CreateTableAsStmt: () => field(field(s, "into"), "rel"),
    ViewStmt: () => field(s, "view"),
    CreateSeqStmt: () => field(s, "sequence"),
    SelectStmt: () => field(field(s, "intoClause"), "rel"),
  };
  const rel = target[type];
  if (rel !== undefined) return rel().schemaname === "pg_temp";
  // CREATE FUNCTION/TYPE/DOMAIN pg_temp.x: the first element of the name list.
  return ["funcname", "defnames", "domainname", "typeName"].some((k) => {
    const names = list(s, k);
    return names.length > 1 && str(field(names[0]!, "String"), "sval") === "pg_temp";
  });
};

const DISCARD: Readonly<Record<string, "plans" | "sequences" | "temp">> = {
  DISCARD_PLANS: "plans",
  DISCARD_SEQUENCES: "sequences",
  DISCARD_TEMP: "temp",
};

const CURSOR_OPT_HOLD = 0x20;

const topLevel = (type: string, s: Fields): SessionEffect[] => {
  switch (type) {
    case "VariableSetStmt":
      return variableSet(s);
    case "TransactionStmt":
      return transaction(s);
    case "DiscardStmt": {
      const what = DISCARD[str(s, "target") ?? ""];
      return what === undefined ? [{ kind: "discardAll" }] : [{ kind: "discard", what }];
    }
    case "DeallocateStmt": {
      const name = str(s, "name");
      return s.isall === true || name === undefined
        ? [{ kind: "deallocate", all: true }]
        : [{ kind: "deallocate", all: false, name }];
    }
    case "ListenStmt":
      return [{ kind: "pin", reason: "listen" }];
    case "UnlistenStmt":
      return s.conditionname === undefined ? [{ kind: "unpin", reason: "listen" }] : [];
    case "ClosePortalStmt":
      return s.portalname === undefined ? [{ kind: "unpin", reason: "with-hold-cursor" }] : [];
    case "LoadStmt":
      return [{ kind: "pin", reason: "load" }];
    case "PrepareStmt":
    case "ExecuteStmt":
      return [{ kind: "pin", reason: "sql-prepare" }];
    case "DeclareCursorStmt":
      return (Number(s.options ?? 0) & CURSOR_OPT_HOLD) !== 0
        ? [{ kind: "pin", reason: "with-hold-cursor" }]
        : [];
    default:
      return [];
  }
};

/** Effects of one parsed statement. */
export const statementEffects = (stmt: RawNode): readonly SessionEffect[] => {
  const [type, s] = nodeOf(stmt);
  const effects = [...topLevel(type, s), ...(NOT_EXECUTED.has(type) ? [] : deepEffects(s))];
  const temp = effects.some((e) => e.kind === "pin" && e.reason === "temp-table");
  if (!temp && (createdInPgTemp(type, s) || field(s, "view").relpersistence === "t")) {
    effects.push({ kind: "pin", reason: "temp-table" });
  }
  return effects;
};

/**
 * Classifies a simple-query string or the text of a Parse. A parse failure is returned as is:
 * PostgreSQL runs the same grammar, so such a query fails there too and changes nothing.
 */
export const classifySessionEffects = (parser: SqlParser, sql: string): ParseOutcome<StatementEffects> => {
  const parsed = parser.parse(sql);
  if (!parsed.ok) return parsed;
  return { ok: true, value: parsed.value.map((s) => statementEffects(s.stmt)) };
};

/** The pin reasons among some effects, each once. */
export const pinReasons = (effects: StatementEffects): readonly PinReason[] => [
  ...new Set(effects.flat().flatMap((e) => (e.kind === "pin" ? [e.reason] : []))),
];

// Every statement with an effect contains one of these (keywords cannot be escaped; U& names can).
const EFFECT_WORDS =
  /set|discard|deallocate|listen|prepare|execute|load|declare|close|temp|advisory|begin|start|commit|end|rollback|abort|savepoint|release|u&/i;

/**
 * A cheap conservative filter: false means the text certainly has no session effect and need
 * not be parsed; true means parse it. Substring matching errs only towards parsing.
 */
export const mayHaveSessionEffects = (sql: string): boolean => EFFECT_WORDS.test(sql);
