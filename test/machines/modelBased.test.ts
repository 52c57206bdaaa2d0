import { connect, type Socket } from "node:net";
import { getAdjacencyMap, getShortestPaths, getSimplePaths, type StatePath } from "@xstate/graph";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromTransition, initialTransition, type SnapshotFrom, transition } from "xstate";
import type { FinalError } from "../../src/machines/actions.ts";
import { type ConnectionMachine, connectionMachine } from "../../src/machines/connectionMachine.ts";
import { type ConnectionEvent, Events, ReadyForQuery, type TxStatus } from "../../src/machines/events.ts";
import { type MachineName, stateKey, type Transition } from "../../src/machines/MachineRunner.ts";
import { type ServerEvent, ServerEvents } from "../../src/machines/serverEvents.ts";
import { type ServerMachine, serverMachine } from "../../src/machines/serverMachine.ts";
import {
  decodeFields,
  encodeBind,
  encodeClose,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeDescribe,
  encodeExecute,
  encodeFlush,
  encodeFunctionCall,
  encodeGSSENCRequest,
  encodeParse,
  encodeQuery,
  encodeSSLRequest,
  encodeStartup,
  encodeSync,
  encodeTerminate,
} from "../../src/protocol/index.ts";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import type { ClientConnection as Session } from "../../src/runtime/ClientConnection.ts";
import { directClient } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";

/*
 * Model-based tests of both machines — the client connection's and the server connection's —
 * against the running proxy and PostgreSQL.
 *
 * The graph is not the bare machine: a client cannot send "ReadyForQuery(T)", it can only send
 * SQL that makes PostgreSQL answer so, and whether the proxy may call a ReadyForQuery final
 * depends on what else is owed. So paths are generated over a small *world* logic: the client
 * machine's snapshot and the server machine's (both advanced with XState's own `transition`)
 * plus what PostgreSQL still owes the client and what the server-side session holds. The world
 * offers only events that real traffic can cause at that point — client messages, the one
 * server message PostgreSQL will send next, or a wait for the login deadline — so every
 * generated path can be replayed as bytes on a socket.
 *
 * Each step also predicts, from the actions XState returns with the client transition, what the
 * wire shows: an `N` for refuseEncryption, the FATAL a sendError sends (or none), and the server
 * machine's transitions, interleaved with the client's as the runtime emits them.
 *
 * A Query step carries its plan (the ReadyForQuery status, COPY, or how PostgreSQL ends the
 * session), chosen where the path is generated; the replay turns plan + current transaction
 * status into SQL. The world's notion of "more results owed" is computed here from the
 * protocol, not copied from the proxy, so it is an independent oracle for the `more` flag.
 */

type Snap = SnapshotFrom<ConnectionMachine>;
type ServerSnap = SnapshotFrom<ServerMachine>;

/**
 * What a simple Query makes PostgreSQL do: rest in a status, COPY, end the session at once
 * (`kill`), or rest in the current status and end the session when it has been idle briefly
 * (`idle`: idle_session_timeout, or idle_in_transaction_session_timeout in a transaction).
 */
type Plan = TxStatus | "copyIn" | "copyOut" | "kill" | "idle";
type QueryStep = { readonly type: "Query"; readonly plan: Plan };
/**
 * A message whose type byte the protocol does not define. The scanner rejects it on sight,
 * before any machine event could be made of it: for the machine it is a ProtocolViolation.
 */
type StrayType = { readonly type: "ProtocolViolation"; readonly stray: true };
type ModelEvent = ConnectionEvent | QueryStep | StrayType;
const strayType: StrayType = { type: "ProtocolViolation", stray: true };
const isStray = (e: ModelEvent): e is StrayType => "stray" in e;

/** Something PostgreSQL still owes the client, oldest first. */
type Owed =
  | { readonly k: "query"; readonly plan: Plan }
  /** COPY FROM STDIN running: PostgreSQL waits for the client. */
  | { readonly k: "copyIn" }
  /** COPY TO STDOUT streaming. */
  | { readonly k: "copyOut" }
  /** Only a ReadyForQuery with this status is left. */
  | { readonly k: "rfq"; readonly s: TxStatus };

interface World {
  readonly m: Snap;
  /** The server connection's machine, once the client half has asked for one. */
  readonly sv: ServerSnap | undefined;
  /** Status of the last ReadyForQuery. */
  readonly tx: TxStatus;
  readonly owed: readonly Owed[];
  /** Extended-query messages sent since the last sync point (outside COPY IN). */
  readonly unsynced: boolean;
  /** The current extended batch hit an error: PostgreSQL skips to the next Sync. */
  readonly skipping: boolean;
  /** The unnamed prepared statement / portal exists on the server. */
  readonly stmt: boolean;
  readonly portal: boolean;
  /** The previous step was a client message still in the same write (pipelining). */
  readonly client: boolean;
  /** PostgreSQL will end the session with a FATAL of this SQLSTATE. */
  readonly doomed: string | undefined;
}

const keyOf = (w: World): string => stateKey(w.m.value);
const serverKeyOf = (w: World): string | undefined => (w.sv === undefined ? undefined : stateKey(w.sv.value));
const ENDS = new Set(["violation", "terminating", "closed"]);
const inStartup = (w: World): boolean => keyOf(w).startsWith("startup.");

/** The status after everything owed so far has been answered. */
const txEnd = (w: World): TxStatus => {
  let s = w.tx;
  for (const o of w.owed) {
    if (o.k === "rfq") s = o.s;
    else if (o.k === "query" && (o.plan === "I" || o.plan === "T" || o.plan === "E")) s = o.plan;
  }
  return s;
};
const inCopyIn = (w: World): boolean => w.owed[0]?.k === "copyIn";
/** PostgreSQL will send something that moves the machine without the client doing anything. */
const serverOwes = (w: World): boolean => (w.owed.length > 0 && !inCopyIn(w)) || w.doomed !== undefined;
/** Plans after which nothing may be pipelined (COPY FROM STDIN consumes the stream; the others end it). */
const blocksPipeline = (w: World): boolean =>
  w.owed.some((o) => o.k === "query" && (o.plan === "copyIn" || o.plan === "kill" || o.plan === "idle"));

const SERVER_TYPES = new Set([
  "ReadyForQuery",
  "CopyInResponse",
  "CopyOutResponse",
  "ServerCopyDone",
  "ServerFatal",
]);
/** Steps nobody sends: the proxy or the sockets make them happen. */
const AUTOMATIC = new Set(["ClientAuthOk", "UpstreamReady", "CancelDone", "Closed"]);
const isAutomatic = (e: ModelEvent): boolean => AUTOMATIC.has(e.type);
/** The client sends nothing and waits for the login deadline. */
const isWait = (e: ModelEvent): boolean => e.type === "Timeout";
const isServer = (e: ModelEvent): boolean => SERVER_TYPES.has(e.type);
const isClient = (e: ModelEvent): boolean => !isServer(e) && !isAutomatic(e) && !isWait(e);

const q = (plan: Plan): QueryStep => ({ type: "Query", plan });

/** Before the startup packet: everything a client can put first on the wire, or nothing. */
const firstPacketOffers: readonly ModelEvent[] = [
  Events.Startup,
  Events.SSLRequest,
  Events.GSSENCRequest,
  Events.CancelRequest,
  Events.DirectTLS,
  Events.StartupInvalid,
  Events.ProtocolViolation,
  Events.ClientClosed,
  Events.Timeout,
];

/** The events real traffic can cause in this world, and nothing else. */
const offers = (w: World): ModelEvent[] => {
  const key = keyOf(w);
  // Only the very first packet can be direct TLS: after a refusal, 0x16 is read as a length.
  if (inStartup(w))
    return key === "startup.fresh"
      ? [...firstPacketOffers]
      : firstPacketOffers.filter((e) => e !== Events.DirectTLS);
  switch (key) {
    case "authenticating.client":
      return [Events.ClientAuthOk];
    case "authenticating.upstream":
      return [Events.UpstreamReady];
    case "cancelling":
      return [Events.CancelDone];
    case "violation":
    case "terminating":
      return [Events.Closed];
    case "closed":
      return [];
  }
  const out: ModelEvent[] = [];
  const head = w.owed[0];
  if (head === undefined && w.doomed !== undefined) out.push(Events.ServerFatal);
  if (head !== undefined && serverOwes(w)) {
    const more = w.owed.length > 1 || w.unsynced;
    if (head.k === "rfq") out.push(ReadyForQuery[head.s][more ? 1 : 0]);
    else if (head.k === "copyOut") out.push(Events.ServerCopyDone);
    else if (head.k === "query") {
      const p = head.plan;
      if (p === "copyIn") out.push(Events.CopyInResponse);
      else if (p === "copyOut") out.push(Events.CopyOutResponse);
      else if (p === "kill") out.push(Events.ServerFatal);
      else out.push(ReadyForQuery[p === "idle" ? w.tx : p][more ? 1 : 0]);
    }
  }
  // The client may act when PostgreSQL owes nothing, or right behind its own previous message.
  if (serverOwes(w) && !w.client) return out;
  if (inCopyIn(w)) {
    out.push(Events.CopyDone, Events.CopyFail, Events.Flush, Events.Sync, Events.Terminate, strayType);
    out.push(Events.ProtocolViolation, Events.ClientClosed, q("I"), Events.Parse);
    return out;
  }
  if (blocksPipeline(w)) return out;
  const end = txEnd(w);
  if (!w.unsynced && w.owed.length < 2) {
    out.push(q("I"), q("T"), q("E"));
    if (end !== "E") out.push(q("copyOut"));
    if (end !== "E" && w.owed.length === 0) out.push(q("copyIn"), q("kill"));
    if (w.owed.length === 0) out.push(q("idle"));
    out.push(Events.FunctionCall);
  }
  out.push(Events.Parse, Events.Bind, Events.Describe, Events.Execute, Events.Close, Events.Flush);
  if (w.owed.length < 2) out.push(Events.Sync);
  out.push(Events.CopyDone, Events.CopyFail, Events.Terminate, strayType);
  if (!serverOwes(w)) out.push(Events.ProtocolViolation, Events.ClientClosed);
  return out;
};

/** Nothing will move the machines unless the client acts: no server message, no automatic step. */
const settled = (w: World): boolean => !serverOwes(w) && !offers(w).some(isAutomatic);

const withHead = (w: World, head: Owed): readonly Owed[] => [head, ...w.owed.slice(1)];

/** One transition as the proxy reports it, without its time and connection id. */
interface Tr {
  readonly machine: MachineName;
  readonly from: string;
  readonly to: string;
  readonly cause: string;
}

/** What one step does: the next world, and what the proxy and the wire show for it. */
interface Effect {
  readonly world: World;
  /** Client and server transitions, in the order the runtime emits them. */
  readonly trace: readonly Tr[];
  /** Single-byte answers (`N`) pgwarden writes. */
  readonly raw: number;
  /** The SQLSTATE of the FATAL the client receives at this step, if any. */
  readonly fatal: string | undefined;
}

/** The SQLSTATE each final error of the client machine's sendError action carries. */
const finalErrorCode = (error: FinalError, e: ModelEvent): string => {
  switch (error) {
    case "given":
      // A repeated encryption request reads, as in PostgreSQL, as an unsupported protocol.
      return e.type === "SSLRequest" || e.type === "GSSENCRequest" ? "0A000" : "08P01";
    case "adminShutdown":
      return "57P01";
    case "connectionLost":
    case "loginTimeout":
      return "08006";
  }
};

const initialServer: ServerSnap = initialTransition(serverMachine)[0];

/** Client messages the link forwards as sync points: each owes one more ReadyForQuery. */
const SYNC_POINTS = new Set(["Query", "FunctionCall", "Sync"]);

/** How PostgreSQL, a correct proxy and both of its machines react to one event. */
const effects = (w0: World, e: ModelEvent): Effect => {
  const [m, actions] = transition(connectionMachine, w0.m, e as ConnectionEvent);
  const acts = new Set(actions.map((a) => a.type));
  const from = keyOf(w0);
  const to = stateKey(m.value);
  const trace: Tr[] = [];
  let sv = w0.sv;
  const toServer = (ev: ServerEvent) => {
    if (sv === undefined || sv.status === "done") return;
    const next = transition(serverMachine, sv, ev)[0];
    const a = stateKey(sv.value);
    const b = stateKey(next.value);
    if (a !== b) trace.push({ machine: "server", from: a, to: b, cause: ev.type });
    sv = next;
  };
  const relayed = from.startsWith("ready.") || from.startsWith("busy.");
  // The link judges each relayed message before applying it: one the machine would reject is
  // sent as a ProtocolViolation carrying the reason, never as itself.
  const cause = to === "violation" && relayed && isClient(e) ? "ProtocolViolation" : e.type;
  const client = () => {
    if (from !== to) trace.push({ machine: "client", from, to, cause });
  };
  // The order in which the runtime emits them: the server's login precedes UpstreamReady, a
  // ReadyForQuery drives the server machine first, and the server leg is gone before Closed.
  if (e.type === "UpstreamReady") {
    toServer(ServerEvents.Connected);
    toServer(ServerEvents.LoggedIn);
    client();
  } else if (e.type === "ReadyForQuery") {
    toServer(e);
    client();
  } else if (e.type === "Closed") {
    toServer(ServerEvents.Lost);
    client();
  } else {
    client();
    if (acts.has("connectServer")) sv = initialServer;
    if (acts.has("closeServer")) toServer(ServerEvents.Close);
    else if (SYNC_POINTS.has(e.type) && relayed && from !== "busy.copy.in" && from !== "busy.copy.both")
      toServer(ServerEvents.Request);
  }
  const sendError = actions.find((a) => a.type === "sendError");
  const fatal =
    sendError !== undefined
      ? finalErrorCode((sendError.params as { error: FinalError }).error, e)
      : e.type === "ServerFatal"
        ? (w0.doomed ?? "57P01")
        : undefined;
  return { world: advance(w0, e, m, sv), trace, raw: acts.has("refuseEncryption") ? 1 : 0, fatal };
};

/** The world after `e`: what PostgreSQL owes and holds, given the machines' new snapshots. */
const advance = (w0: World, e: ModelEvent, m: Snap, sv: ServerSnap | undefined): World => {
  const client = isClient(e);
  const w: World = { ...w0, m, sv, client };
  if (ENDS.has(stateKey(m.value)))
    return { ...w, owed: [], unsynced: false, skipping: false, client: false, doomed: undefined };
  const end = txEnd(w0);
  /** An extended message that fails when `bad`, unless the batch already failed. */
  const extended = (bad: boolean, ok: Partial<World>): World =>
    w0.skipping
      ? { ...w, unsynced: true }
      : bad
        ? { ...w, unsynced: true, skipping: true }
        : { ...w, unsynced: true, ...ok };
  switch (e.type) {
    case "UpstreamReady":
      return { ...w, tx: "I" };
    case "Query":
      // A simple Query drops the unnamed statement and portal.
      return {
        ...w,
        owed: [...w0.owed, { k: "query", plan: (e as QueryStep).plan }],
        stmt: false,
        portal: false,
      };
    case "FunctionCall":
      return { ...w, owed: [...w0.owed, { k: "rfq", s: end }], portal: end === "T" && w0.portal };
    case "Parse":
      return extended(end === "E", { stmt: true });
    case "Bind":
      return extended(end === "E" || !w0.stmt, { portal: true });
    case "Describe":
      return extended(end === "E" || !w0.stmt, {});
    case "Execute":
      return extended(end === "E" || !w0.portal, {});
    case "Close":
      return extended(false, {});
    case "Flush":
      // PostgreSQL ignores Flush during COPY IN: it starts no extended batch there.
      return inCopyIn(w0) ? w : { ...w, unsynced: true };
    case "Sync": {
      if (inCopyIn(w0)) return w; // ignored during COPY IN
      const s: TxStatus = w0.skipping ? (end === "I" ? "I" : "E") : end;
      return {
        ...w,
        owed: [...w0.owed, { k: "rfq", s }],
        unsynced: false,
        skipping: false,
        portal: s === "T" && w0.portal,
      };
    }
    case "CopyDone":
      return inCopyIn(w0) ? { ...w, owed: withHead(w0, { k: "rfq", s: w0.tx }) } : w;
    case "CopyFail":
      return inCopyIn(w0) ? { ...w, owed: withHead(w0, { k: "rfq", s: w0.tx === "T" ? "E" : "I" }) } : w;
    case "ReadyForQuery": {
      const head = w0.owed[0];
      // The idle plan's timeout starts once PostgreSQL waits for the client.
      const doomed =
        head?.k === "query" && head.plan === "idle" ? (e.status === "I" ? "57P05" : "25P03") : w0.doomed;
      return { ...w, owed: w0.owed.slice(1), tx: e.status, portal: e.status === "T" && w0.portal, doomed };
    }
    case "CopyInResponse":
      return { ...w, owed: withHead(w0, { k: "copyIn" }) };
    case "CopyOutResponse":
      return { ...w, owed: withHead(w0, { k: "copyOut" }) };
    case "ServerCopyDone":
      return { ...w, owed: withHead(w0, { k: "rfq", s: w0.tx }) };
    default:
      return w;
  }
};

const step = (w: World, e: ModelEvent): World => effects(w, e).world;

const serialize = (w: World): string =>
  [
    keyOf(w),
    serverKeyOf(w) ?? "-",
    w.tx,
    w.owed.map((o) => (o.k === "query" ? `q:${o.plan}` : o.k === "rfq" ? `rfq:${o.s}` : o.k)).join(","),
    w.unsynced ? "u" : "",
    w.skipping ? "x" : "",
    w.stmt ? "s" : "",
    w.portal ? "p" : "",
    w.client ? "c" : "",
    w.doomed ?? "",
  ].join("|");

const initialWorld: World = {
  m: initialTransition(connectionMachine)[0],
  sv: undefined,
  tx: "I",
  owed: [],
  unsynced: false,
  skipping: false,
  stmt: false,
  portal: false,
  client: false,
  doomed: undefined,
};

const worldLogic = fromTransition((w: World, e: ModelEvent) => step(w, e), initialWorld);
type WorldSnap = SnapshotFrom<typeof worldLogic>;
type Path = StatePath<WorldSnap, ModelEvent>;

const traversal = (events: (w: World) => ModelEvent[]) => ({
  events: (s: WorldSnap) => events(s.context),
  serializeState: (s: WorldSnap) => serialize(s.context),
  stopWhen: () => false,
});

/** A world where the session rests: nothing owed, nothing pending, or the connection is gone. */
const rests = (w: World): boolean =>
  keyOf(w) === "closed" ||
  (keyOf(w).startsWith("ready.") && w.owed.length === 0 && !w.unsynced && w.doomed === undefined);

const eventLabel = (e: ModelEvent): string =>
  e.type === "ReadyForQuery"
    ? `ReadyForQuery(${e.status}${e.more ? ",more" : ""})`
    : isStray(e)
      ? "ProtocolViolation(stray type byte)"
      : e.type;
/** Which SQL a Query step stands for: the transaction status it starts from and its plan. */
const planSig = (w: World, e: ModelEvent): string[] =>
  e.type === "Query" && !inCopyIn(w) ? [`${txEnd(w)}→${(e as QueryStep).plan}`] : [];
/** One edge of the machines, as the coverage counts it; a Query counts once per kind of SQL. */
const edgeSig = (from: World, e: ModelEvent, to: World) => {
  const s0 = serverKeyOf(from);
  const s1 = serverKeyOf(to);
  const server = s0 === s1 ? "" : ` [server ${s0 ?? "-"} → ${s1}]`;
  return `${keyOf(from)} --${eventLabel(e)}${planSig(from, e)
    .map((s) => `(${s})`)
    .join("")}--> ${keyOf(to)}${server}`;
};

interface ModelPath {
  /** worlds[0] is the initial world; worlds[i] follows events[i - 1]. */
  readonly worlds: readonly World[];
  readonly events: readonly ModelEvent[];
  readonly origin: "shortest" | "edge" | "simple";
}

const toModelPath = (events: readonly ModelEvent[], origin: ModelPath["origin"]): ModelPath => {
  const worlds = [initialWorld];
  for (const e of events) worlds.push(step(worlds[worlds.length - 1]!, e));
  return { worlds, events, origin };
};
const plansOf = (p: ModelPath): string[] => p.events.flatMap((e, i) => planSig(p.worlds[i]!, e));
const eventsOf = (p: Path): ModelEvent[] => p.steps.slice(1).map((s) => s.event);
const signatures = (p: ModelPath): string[] =>
  p.events.map((e, i) => edgeSig(p.worlds[i]!, e, p.worlds[i + 1]!));

/**
 * Paths to replay, all bounded:
 * 1. from getShortestPaths, the shortest path to each state of the machine;
 * 2. walks that cover every machine edge of the world graph: each heads for the nearest
 *    uncovered edge, takes it, then follows the shortest way to a resting state before the next
 *    one — so an edge whose damage shows only later (a wrong `more` flag) is followed until it
 *    shows; an edge that ends the connection ends the walk;
 * 3. from getSimplePaths over whole transactions (no pipelining), paths that add pairs of
 *    consecutive edges not replayed yet, up to the cap.
 * Every path ends resting: idle with nothing owed, or closed.
 */
const generate = (maxPaths: number, maxWalk: number) => {
  const full = traversal(offers);
  const adjacency = getAdjacencyMap(worldLogic, full);
  const start = serialize(initialWorld);
  const shortest = getShortestPaths(worldLogic, full);

  interface Edge {
    readonly event: ModelEvent;
    readonly to: string;
    readonly sig: string;
    readonly ends: boolean;
  }
  const succ = new Map<string, Edge[]>();
  const preds = new Map<string, { from: string; event: ModelEvent }[]>();
  for (const [from, v] of Object.entries(adjacency)) {
    const out: Edge[] = [];
    for (const t of Object.values(v.transitions) as { event: ModelEvent; state: WorldSnap }[]) {
      const to = serialize(t.state.context);
      out.push({
        event: t.event,
        to,
        sig: edgeSig(v.state.context, t.event, t.state.context),
        ends: ENDS.has(keyOf(t.state.context)),
      });
      preds.set(to, [...(preds.get(to) ?? []), { from, event: t.event }]);
    }
    succ.set(from, out);
  }

  // Shortest continuation from each world to a resting one: BFS backwards from the ready, idle
  // worlds first — a live connection is finished by the client and server, never by hanging
  // up — and only then from the closed ones, which only the ending states still need.
  const onward = new Map<string, { event: ModelEvent; to: string } | null>();
  const queue: string[] = [];
  const bfs = (seed: (w: World) => boolean) => {
    for (const [k, v] of Object.entries(adjacency)) {
      if (!onward.has(k) && seed(v.state.context)) {
        onward.set(k, null);
        queue.push(k);
      }
    }
    for (let i = 0; i < queue.length; i++) {
      const to = queue[i]!;
      for (const p of preds.get(to) ?? []) {
        if (!onward.has(p.from)) {
          onward.set(p.from, { event: p.event, to });
          queue.push(p.from);
        }
      }
    }
  };
  bfs((w) => rests(w) && keyOf(w) !== "closed");
  bfs(rests);
  for (const k of Object.keys(adjacency))
    if (!onward.has(k)) throw new Error(`no way from ${k} to a resting state`);
  const finish = (k: string): ModelEvent[] => {
    const out: ModelEvent[] = [];
    for (let hop = onward.get(k); hop; hop = onward.get(hop.to)) out.push(hop.event);
    return out;
  };

  const allEdges = new Set([...succ.values()].flatMap((es) => es.map((e) => e.sig)));
  const covered = new Set<string>();
  /** The nearest uncovered edge from `from` (BFS), with the events that lead to it. */
  const nearest = (from: string, allowEnding: boolean): { events: ModelEvent[]; edge: Edge } | undefined => {
    const back = new Map<string, { prev: string; event: ModelEvent } | null>([[from, null]]);
    const todo = [from];
    for (let i = 0; i < todo.length; i++) {
      const u = todo[i]!;
      const edges = succ.get(u) ?? [];
      const hit = edges.find((e) => !covered.has(e.sig) && (allowEnding || !e.ends));
      if (hit !== undefined) {
        const events: ModelEvent[] = [];
        for (let b = back.get(u); b; b = back.get(b.prev)) events.unshift(b.event);
        return { events, edge: hit };
      }
      for (const e of edges) {
        if (!e.ends && !back.has(e.to)) {
          back.set(e.to, { prev: u, event: e.event });
          todo.push(e.to);
        }
      }
    }
    return undefined;
  };

  // A shortest path to each state of the machine, finished to a resting state.
  const chosen: ModelPath[] = [];
  const toState = new Map<string, ModelEvent[]>();
  for (const p of shortest) {
    const key = keyOf(p.state.context);
    const events = eventsOf(p);
    if ((toState.get(key)?.length ?? Infinity) > events.length) toState.set(key, events);
  }
  for (const events of toState.values()) {
    const p = toModelPath(
      [...events, ...finish(serialize(toModelPath(events, "shortest").worlds.at(-1)!))],
      "shortest",
    );
    for (const sig of signatures(p)) covered.add(sig);
    chosen.push(p);
  }
  const shortestPaths = chosen.length;

  while (covered.size < allEdges.size && chosen.length < maxPaths) {
    let cur = start;
    const events: ModelEvent[] = [];
    for (;;) {
      const next = nearest(cur, false) ?? nearest(cur, true);
      if (next === undefined) break;
      // Each edge is followed by the way to rest, so its consequences show before the next one.
      const settle = finish(next.edge.to);
      if (events.length > 0 && events.length + next.events.length + 1 + settle.length > maxWalk) break;
      events.push(...next.events, next.edge.event, ...settle);
      for (const sig of signatures(toModelPath(events, "edge"))) covered.add(sig);
      if (next.edge.ends) break;
      cur = serialize(toModelPath(events, "edge").worlds.at(-1)!);
    }
    if (events.length === 0) break;
    const p = toModelPath(events, "edge");
    for (const sig of signatures(p)) covered.add(sig);
    chosen.push(p);
  }
  const edgePaths = chosen.length - shortestPaths;

  // Simple paths over whole transactions: no pipelining, a handful of plans, bounded by design.
  const txOnly = (w: World): ModelEvent[] => {
    const all = offers(w);
    if (serverOwes(w)) return all.filter((e) => isServer(e) || isAutomatic(e));
    const keep = new Set([
      "Startup",
      "ClientAuthOk",
      "UpstreamReady",
      "CopyDone",
      "CopyFail",
      "Terminate",
      "ClientClosed",
      "Closed",
    ]);
    const endsSession = new Set<Plan>(["kill", "idle"]);
    return all.filter(
      (e) =>
        keep.has(e.type) || (e.type === "Query" && !endsSession.has((e as QueryStep).plan) && !inCopyIn(w)),
    );
  };
  const simple = getSimplePaths(worldLogic, {
    ...traversal(txOnly),
    toState: (s: WorldSnap) => rests(s.context),
  });
  // First the simple paths that replay a Query plan from a transaction status not replayed yet
  // (each is different SQL), then those that add pairs of consecutive edges.
  const plans = new Set(chosen.flatMap(plansOf));
  const pairs = new Set<string>();
  const pairSigs = (p: ModelPath) =>
    signatures(p).flatMap((s, i, a) => (i === 0 ? [] : [`${a[i - 1]} ⟶ ${s}`]));
  for (const p of chosen) for (const s of pairSigs(p)) pairs.add(s);
  const simpleCandidates = simple.map((p) => toModelPath(eventsOf(p), "simple"));
  simpleCandidates.sort((a, b) => a.events.length - b.events.length);
  const take = (p: ModelPath) => {
    for (const s of pairSigs(p)) pairs.add(s);
    for (const s of plansOf(p)) plans.add(s);
    chosen.push(p);
  };
  for (const p of simpleCandidates) {
    if (chosen.length < maxPaths && plansOf(p).some((s) => !plans.has(s))) take(p);
  }
  for (const p of simpleCandidates) {
    if (chosen.length < maxPaths && !chosen.includes(p) && pairSigs(p).some((s) => !pairs.has(s))) take(p);
  }
  return {
    paths: chosen,
    worlds: Object.keys(adjacency).length,
    edges: allEdges.size,
    covered: covered.size,
    shortestPaths,
    edgePaths,
    simpleFound: simple.length,
    pairs: pairs.size,
    plans,
  };
};

const generatedAt = performance.now();
const MAX_PATHS = 120;
const model = generate(MAX_PATHS, 50);
const generationMs = Math.round(performance.now() - generatedAt);
console.log(
  `model-based: ${model.worlds} world states, ${model.edges} edges (machine edges, a Query once per kind of SQL); replaying ${model.paths.length} paths ` +
    `(${model.shortestPaths} shortest to each state, ${model.edgePaths} walks to cover all ${model.covered} edges, ` +
    `${model.paths.length - model.edgePaths - model.shortestPaths} of ${model.simpleFound} ` +
    `simple paths adding SQL or edge pairs; ${model.plans.size} kinds of Query, ${model.pairs} edge pairs in all), ` +
    `generated in ${generationMs} ms`,
);

// Concrete traffic --------------------------------------------------------------------------------

const COPY_TABLE = "pgwarden_mbt_copy";
let functionOid = 0;
/** The login deadline of the proxy under test: short, so that waiting for it is cheap. */
const LOGIN_TIMEOUT_MS = 1000;
/** How long PostgreSQL lets an `idle` plan's session sit before it ends it. */
const IDLE_TIMEOUT = "'20ms'";

/** SQL that makes PostgreSQL carry out `plan` when the session is in `from`. */
const sqlFor = (plan: Plan, from: TxStatus): string => {
  switch (plan) {
    case "copyIn":
      return `COPY ${COPY_TABLE} FROM STDIN`;
    case "copyOut":
      return "COPY (SELECT 1) TO STDOUT";
    case "kill":
      return "SELECT pg_terminate_backend(pg_backend_pid())";
    case "idle": {
      // A failed transaction takes no SET, and its abort undoes the SETs made in it: the
      // setting is committed first, then the transaction begun and failed again.
      return {
        I: `SET idle_session_timeout = ${IDLE_TIMEOUT}`,
        T: `SET LOCAL idle_in_transaction_session_timeout = ${IDLE_TIMEOUT}`,
        E: `ROLLBACK; SET idle_in_transaction_session_timeout = ${IDLE_TIMEOUT}; COMMIT; BEGIN; SELECT 1/0`,
      }[from];
    }
  }
  const table: Record<TxStatus, Record<TxStatus, string>> = {
    I: { I: "SELECT 1", T: "BEGIN", E: "BEGIN; SELECT 1/0" },
    T: { I: "COMMIT", T: "SELECT 1", E: "SELECT 1/0" },
    E: { I: "ROLLBACK", T: "ROLLBACK; BEGIN", E: "SELECT 1" },
  };
  return table[from][plan];
};

const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

const startupPacket = () =>
  encodeStartup(
    new Map([
      ["user", "postgres"],
      ["database", "postgres"],
    ]),
  );

/** A startup packet naming `user` twice: malformed, so PostgreSQL and pgwarden answer 08P01. */
const duplicateParameter = (() => {
  const body = Buffer.from("user\0a\0user\0b\0\0", "latin1");
  return Buffer.concat([int32(8 + body.length), int32(3 << 16), body]);
})();

/** The bytes a client step puts on the wire (undefined: it closes the socket instead). */
const bytesFor = (w: World, e: ModelEvent): Buffer | undefined => {
  const key = keyOf(w);
  if (isStray(e)) return Buffer.concat([Buffer.from("z"), int32(4)]);
  switch (e.type) {
    case "Startup":
      return startupPacket();
    case "SSLRequest":
      return encodeSSLRequest();
    case "GSSENCRequest":
      return encodeGSSENCRequest();
    case "CancelRequest":
      return encodeCancelRequest(1, Buffer.from([1, 2, 3, 4]));
    case "DirectTLS":
      return Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05]); // the start of a TLS record
    case "StartupInvalid":
      // node-postgres' Terminate before the startup packet (its first word reads as a length
      // far too large), or after a refusal a length below 8: PostgreSQL closes without a word.
      return key === "startup.fresh" ? encodeTerminate() : int32(4);
    case "ProtocolViolation":
      // First a malformed startup packet; after a refused request, a startup packet sent in
      // the same write as the request (see `pipelines`); later a message length below 4.
      if (key === "startup.fresh") return duplicateParameter;
      if (inStartup(w)) return startupPacket();
      return Buffer.concat([Buffer.from("Q"), int32(2)]);
    case "Query":
      return encodeQuery(inCopyIn(w) ? "SELECT 1" : sqlFor((e as QueryStep).plan, txEnd(w)));
    case "FunctionCall":
      return encodeFunctionCall({ functionOid, argFormats: [], args: [], resultFormat: 0 });
    case "Parse":
      return encodeParse({ name: "", query: "SELECT 1", paramTypes: [] });
    case "Bind":
      return encodeBind({ portal: "", statement: "", paramFormats: [], params: [], resultFormats: [] });
    case "Describe":
      return encodeDescribe({ target: "S", name: "" });
    case "Execute":
      return encodeExecute({ portal: "", maxRows: 0 });
    case "Close":
      return encodeClose({ target: "S", name: "pgwarden_mbt_absent" });
    case "Flush":
      return encodeFlush();
    case "Sync":
      return encodeSync();
    case "CopyDone":
      return inCopyIn(w)
        ? Buffer.concat([encodeCopyData(Buffer.from("7\n")), encodeCopyDone()])
        : encodeCopyDone();
    case "CopyFail":
      return encodeCopyFail("pgwarden model-based test");
    case "Terminate":
      return encodeTerminate();
    case "ClientClosed":
      return undefined;
  }
  throw new Error(`no bytes for ${e.type}`);
};

/**
 * Whether the client step `following` (taken in world `w`) goes out in the same write as the
 * client step before it. Pipelining is normal once logged in; before the startup packet a
 * client waits for each answer, except for the ProtocolViolation that consists of not waiting.
 */
const pipelines = (w: World, following: ModelEvent): boolean =>
  isClient(following) && (!inStartup(w) || following.type === "ProtocolViolation");

/** The client end of one connection: raw bytes in and out, messages counted by type. */
class Wire {
  readonly socket: Socket;
  private inbox = Buffer.alloc(0);
  /** Single-byte answers (SSLRequest, GSSENCRequest) still to come before tagged messages. */
  rawExpected = 0;
  raw = 0;
  readonly counts = new Map<string, number>();
  readonly errorCodes: string[] = [];
  /** SQLSTATEs of the ErrorResponses of severity FATAL: whoever ends a session sends one. */
  readonly fatals: string[] = [];
  written = 0;
  closed = false;

  constructor(port: number) {
    this.socket = connect({ host: "127.0.0.1", port });
    this.socket.on("data", (chunk: Buffer) => this.take(chunk));
    this.socket.on("error", () => {});
    this.socket.on("close", () => {
      this.closed = true;
    });
  }

  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("error", reject);
    });
  }

  count(type: string): number {
    return this.counts.get(type) ?? 0;
  }

  write(b: Buffer): void {
    this.written += b.length;
    this.socket.write(b);
  }

  private take(chunk: Buffer): void {
    this.inbox = Buffer.concat([this.inbox, chunk]);
    for (;;) {
      if (this.rawExpected > 0 && this.inbox.length >= 1 && this.inbox[0] !== 0x45) {
        this.rawExpected--;
        this.raw++;
        this.inbox = this.inbox.subarray(1);
        continue;
      }
      if (this.inbox.length < 5) return;
      const len = this.inbox.readInt32BE(1);
      if (this.inbox.length < 1 + len) return;
      const msg = this.inbox.subarray(0, 1 + len);
      this.inbox = this.inbox.subarray(1 + len);
      const type = String.fromCharCode(msg[0]!);
      this.counts.set(type, this.count(type) + 1);
      if (type === "E") {
        const fields = decodeFields(msg);
        if (fields instanceof Map) {
          const code = fields.get("C") ?? "?";
          this.errorCodes.push(code);
          if ((fields.get("V") ?? fields.get("S")) === "FATAL") this.fatals.push(code);
        }
      }
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What must have been observed once step i has had its effect. */
interface Expectation {
  trace: number;
  written: number;
  raw: number;
  Z: number;
  G: number;
  H: number;
  c: number;
  fatals: number;
}

const who = (e: ModelEvent): string =>
  isServer(e) ? "server" : isAutomatic(e) ? "auto" : isWait(e) ? "wait" : "client";

const describePath = (p: ModelPath, failing?: number): string =>
  p.events
    .map((e, i) => {
      const w = p.worlds[i]!;
      const extra = e.type === "Query" && !inCopyIn(w) ? ` [${sqlFor((e as QueryStep).plan, txEnd(w))}]` : "";
      const mark = i === failing ? ">>" : "  ";
      const next = p.worlds[i + 1]!;
      return `${mark} ${i + 1}. ${who(e)} ${eventLabel(e)}${extra} → ${keyOf(next)} / ${serverKeyOf(next) ?? "-"}`;
    })
    .join("\n");

const pathEffects = (p: ModelPath): Effect[] => p.events.map((e, i) => effects(p.worlds[i]!, e));

let proxy: TestProxy;

const findSession = async (known: ReadonlySet<string>): Promise<Session> => {
  for (let i = 0; i < 200; i++) {
    for (const [id, s] of proxy.server.sessions) if (!known.has(id)) return s;
    await sleep(5);
  }
  throw new Error("the proxy never registered a session for the new socket");
};

const replay = async (p: ModelPath): Promise<void> => {
  const known = new Set(proxy.server.sessions.keys());
  const since = proxy.transitions.length;
  const wire = new Wire(proxy.port);
  await wire.opened();
  const session = await findSession(known);
  /**
   * This connection's transitions, client and server interleaved as emitted. Paths replay one
   * at a time and each waits for its connection to close, so every server transition since the
   * start belongs to the one server connection this client asked for.
   */
  const serverIds = new Set<string>();
  const trace = (): Tr[] =>
    proxy.transitions
      .slice(since)
      .filter((t: Transition) => (t.machine === "client" ? t.connectionId === session.id : true))
      .map((t) => {
        if (t.machine === "server") serverIds.add(t.connectionId);
        return { machine: t.machine, from: t.from, to: t.to, cause: t.cause };
      });
  /** The server machine's state as its transitions tell it: `connecting` emits none. */
  const serverState = (shown: readonly Tr[], exists: boolean): string | undefined =>
    shown.filter((t) => t.machine === "server").at(-1)?.to ?? (exists ? "connecting" : undefined);
  const fx = pathEffects(p);
  const want = fx.flatMap((f) => f.trace);
  const wantFatals = fx.flatMap((f) => (f.fatal === undefined ? [] : [f.fatal]));

  // Expected observations after each step.
  const exp: Expectation[] = [];
  let e: Expectation = { trace: 0, written: 0, raw: 0, Z: 0, G: 0, H: 0, c: 0, fatals: 0 };
  p.events.forEach((ev, i) => {
    const w = p.worlds[i]!;
    const f = fx[i]!;
    e = { ...e };
    e.trace += f.trace.length;
    if (isClient(ev)) e.written += bytesFor(w, ev)?.length ?? 0;
    e.raw += f.raw;
    if (ev.type === "UpstreamReady" || ev.type === "ReadyForQuery") e.Z++;
    if (ev.type === "CopyInResponse") e.G++;
    if (ev.type === "CopyOutResponse") e.H++;
    if (ev.type === "ServerCopyDone") e.c++;
    if (f.fatal !== undefined) e.fatals++;
    exp.push(e);
  });

  const fail = (i: number, why: string): never => {
    const shown = trace();
    throw new Error(
      `${why}\nat step ${i + 1} of ${p.origin} path (connection ${session.id}, server ${[...serverIds].join(",") || "-"}):\n` +
        `${describePath(p, i)}\n` +
        `expected transitions:\n${JSON.stringify(want.slice(0, exp[i]!.trace), null, 0)}\n` +
        `actual transitions:\n${JSON.stringify(shown, null, 0)}\n` +
        `FATALs expected ${JSON.stringify(wantFatals.slice(0, exp[i]!.fatals))}, received ${JSON.stringify(wire.fatals)}\n` +
        `proxy state now: ${session.machine.state} / ${serverState(shown, p.worlds[i + 1]!.sv !== undefined) ?? "-"}`,
    );
  };

  /** Client messages not yet written: pipelined messages go out in one write. */
  let batch: Buffer[] = [];
  let closesSocket = false;
  try {
    for (let i = 0; i < p.events.length; i++) {
      const ev = p.events[i]!;
      const w = p.worlds[i]!;
      const next = p.worlds[i + 1]!;
      const x = exp[i]!;
      if (isClient(ev)) {
        const bytes = bytesFor(w, ev);
        wire.rawExpected += fx[i]!.raw;
        if (bytes !== undefined) batch.push(bytes);
        const following = p.events[i + 1];
        if (bytes !== undefined && following !== undefined && pipelines(next, following)) continue;
        if (batch.length > 0) wire.write(Buffer.concat(batch));
        batch = [];
        if (bytes === undefined) {
          wire.socket.end();
          closesSocket = true;
        }
      }
      const nextKey = keyOf(next);
      const nextServer = serverKeyOf(next);
      // Once reading stops, or for a first packet that is not a startup packet, the socket's
      // byte count need not reach what was written.
      const ended = ENDS.has(nextKey) || closesSocket || nextKey === "cancelling" || ev.type === "DirectTLS";
      const seen = () =>
        trace().length >= x.trace &&
        (ended || session.bytesFromClient >= x.written) &&
        wire.raw >= x.raw &&
        wire.count("Z") >= x.Z &&
        wire.count("G") >= x.G &&
        wire.count("H") >= x.H &&
        wire.count("c") >= x.c &&
        wire.fatals.length >= x.fatals &&
        (nextKey !== "closed" || wire.closed);
      const t0 = Date.now();
      const patience = isWait(ev) ? LOGIN_TIMEOUT_MS + 2000 : 2000;
      while (!seen() && Date.now() - t0 < patience) await sleep(2);
      const actual = trace();
      const expected = want.slice(0, x.trace);
      for (let j = 0; j < Math.min(actual.length, expected.length); j++) {
        if (JSON.stringify(actual[j]) !== JSON.stringify(expected[j])) {
          fail(
            exp.findIndex((y) => y.trace > j),
            `transition ${j + 1} differs from the model`,
          );
        }
      }
      if (serverIds.size > 1) fail(i, `more than one server connection: ${[...serverIds].join(", ")}`);
      if (actual.length < expected.length)
        fail(i, `the proxy did not make the predicted transition within ${patience} ms`);
      if (!seen()) fail(i, `the traffic the model predicts did not arrive within ${patience} ms`);
      const fatals = wantFatals.slice(0, x.fatals);
      if (JSON.stringify(wire.fatals.slice(0, x.fatals)) !== JSON.stringify(fatals))
        fail(i, "the FATAL errors received differ from those the actions predict");
      if (settled(next)) {
        // Nothing else is on its way: both machines must be exactly where the model is.
        if (actual.length !== expected.length)
          fail(i, "the proxy made a transition the model does not predict");
        if (session.machine.state !== nextKey)
          fail(i, `proxy reports ${session.machine.state}, model says ${nextKey}`);
        const server = serverState(actual, next.sv !== undefined);
        if (server !== nextServer)
          fail(i, `server connection is ${server ?? "absent"}, model says ${nextServer ?? "absent"}`);
        if (wire.fatals.length !== fatals.length) fail(i, "a FATAL error the actions do not predict");
      }
      if (nextKey === "closed" && !wire.closed) fail(i, "the socket is still open");
    }
  } finally {
    if (!wire.closed) wire.socket.destroy();
    await Promise.race([session.closed, sleep(2000)]);
  }
};

beforeAll(async () => {
  const c = await directClient();
  try {
    await c.query(`CREATE TABLE IF NOT EXISTS ${COPY_TABLE} (x int)`);
    const r = await c.query<{ oid: number }>("SELECT 'pg_backend_pid'::regproc::oid::int AS oid");
    functionOid = r.rows[0]!.oid;
  } finally {
    await c.end();
  }
  // One server connection per session, as the model draws it: no reuse between paths.
  proxy = await startProxy({
    auth: { method: "trust", timeoutMs: LOGIN_TIMEOUT_MS },
    pool: { maxIdlePerKey: 0 },
  });
});

afterAll(async () => {
  await proxy?.close();
  const c = await directClient();
  await c.query(`DROP TABLE IF EXISTS ${COPY_TABLE}`);
  await c.end();
});

describe("model-based: generated paths replayed through pgwarden against PostgreSQL", () => {
  it("the generated paths reach every state real traffic can reach and stay bounded", () => {
    const reached = new Set(model.paths.flatMap((p) => p.worlds.map(keyOf)));
    // busy.copy.both needs a replication connection and tls a certificate: out of reach here,
    // as are ServerClosed (a server leg lost without a FATAL) and Shutdown; the machine tests
    // cover those edges.
    for (const k of [
      "startup.fresh",
      "startup.sslRefused",
      "startup.gssRefused",
      "startup.bothRefused",
      "cancelling",
      "authenticating.client",
      "authenticating.upstream",
      "ready.idle",
      "ready.inTransaction",
      "ready.failed",
      "busy.simpleQuery",
      "busy.extendedQuery",
      "busy.copy.in",
      "busy.copy.out",
      "busy.copy.done",
      "violation",
      "terminating",
      "closed",
    ]) {
      expect(reached, k).toContain(k);
    }
    // Every server state but resetting, which only pooling's reuse of a connection enters.
    const serverReached = new Set(
      model.paths.flatMap((p) =>
        pathEffects(p).flatMap((f) => f.trace.filter((t) => t.machine === "server")),
      ),
    );
    expect(new Set([...serverReached].flatMap((t) => [t.from, t.to]))).toEqual(
      new Set(["connecting", "authenticating", "idle", "active", "inTransaction", "closing", "closed"]),
    );
    // The ways out real traffic can take, each with the FATAL (or silence) its actions predict.
    const causes = new Set(
      model.paths.flatMap((p) =>
        pathEffects(p).flatMap((f) =>
          f.trace.filter((t) => t.machine === "client" && ENDS.has(t.to)).map((t) => `${t.from} ${t.cause}`),
        ),
      ),
    );
    for (const c of [
      "startup.fresh StartupInvalid",
      "startup.fresh DirectTLS",
      "startup.fresh Timeout",
      "startup.sslRefused SSLRequest",
      "startup.gssRefused GSSENCRequest",
      "startup.bothRefused Timeout",
      "startup.sslRefused ProtocolViolation",
      "cancelling CancelDone",
      "busy.simpleQuery ServerFatal",
      "ready.idle ServerFatal",
      "ready.inTransaction ServerFatal",
      "ready.failed ServerFatal",
      "busy.copy.in ClientClosed",
      "ready.idle Terminate",
    ])
      expect(causes, c).toContain(c);
    expect(model.covered, "every machine edge of the world graph is replayed").toBe(model.edges);
    // Every transaction status reached from every other by SQL, COPY/termination from I and T,
    // and PostgreSQL's idle timeouts from each status.
    const sql = (["I", "T", "E"] as const).flatMap((from) => ["I", "T", "E"].map((to) => `${from}→${to}`));
    expect([...model.plans].sort()).toEqual(
      expect.arrayContaining([
        ...sql,
        "I→copyIn",
        "I→copyOut",
        "T→copyIn",
        "T→copyOut",
        "I→kill",
        "I→idle",
        "T→idle",
        "E→idle",
      ]),
    );
    expect(model.paths.length).toBeLessThanOrEqual(MAX_PATHS);
    expect(model.paths.length).toBeGreaterThan(20);
  });

  it.each(model.paths.map((p, i) => [i + 1, p.events.map(eventLabel).slice(-3).join(" → "), p] as const))(
    "path %i (… %s)",
    async (_n, _label, p) => {
      await replay(p);
    },
  );
});

describe("model-based: focused replays of what the model found", () => {
  const login = async () => {
    const known = new Set(proxy.server.sessions.keys());
    const wire = new Wire(proxy.port);
    await wire.opened();
    const session = await findSession(known);
    wire.write(
      encodeStartup(
        new Map([
          ["user", "postgres"],
          ["database", "postgres"],
        ]),
      ),
    );
    await until(() => wire.count("Z") >= 1);
    return { wire, session };
  };
  const until = async (ok: () => boolean) => {
    const t0 = Date.now();
    while (!ok() && Date.now() - t0 < 2000) await sleep(2);
  };

  it("PostgreSQL ending COPY FROM STDIN on a bad row leaves the session usable", async () => {
    // The world sends only good rows, so no generated path contains this. PostgreSQL answers
    // the bad CopyData with ErrorResponse 22P02 and, for a simple Query, an immediate
    // ReadyForQuery — while the client is still in COPY IN. That is legal traffic.
    const { wire, session } = await login();
    try {
      wire.write(encodeQuery(`COPY ${COPY_TABLE} FROM STDIN`));
      await until(() => wire.count("G") >= 1);
      expect(session.machine.state).toBe("busy.copy.in");
      wire.write(encodeCopyData(Buffer.from("not a number\n")));
      await until(() => wire.count("Z") >= 2 || wire.closed);
      expect(wire.errorCodes).toEqual(["22P02"]);
      expect(wire.closed).toBe(false);
      expect(session.machine.state).toBe("ready.idle");
      wire.write(Buffer.concat([encodeCopyDone(), encodeQuery("SELECT 1")]));
      await until(() => wire.count("Z") >= 3 || wire.closed);
      expect(wire.count("Z")).toBe(3);
      expect(session.machine.state).toBe("ready.idle");
    } finally {
      wire.socket.destroy();
    }
  });

  it("Flush during COPY IN does not leave the session busy after the COPY", async () => {
    // A generated path shows this too (…CopyInResponse → Flush → CopyDone → ReadyForQuery(I));
    // here it is on its own. PostgreSQL ignores Flush during COPY IN, so the ReadyForQuery after
    // the COPY is the last one owed and the session is idle again.
    const { wire, session } = await login();
    try {
      wire.write(encodeQuery(`COPY ${COPY_TABLE} FROM STDIN`));
      await until(() => wire.count("G") >= 1);
      wire.write(Buffer.concat([encodeCopyData(Buffer.from("1\n")), encodeFlush(), encodeCopyDone()]));
      await until(() => wire.count("Z") >= 2);
      expect(wire.count("Z")).toBe(2);
      expect(session.machine.state).toBe("ready.idle");
    } finally {
      wire.socket.destroy();
    }
  });
});
