import { setup } from "xstate";
import type { ServerAction } from "./actions.ts";
import type { ServerEvent, ServerEventType } from "./serverEvents.ts";

/**
 * The life of one server connection (pgwarden's leg to PostgreSQL), independent of which client
 * it serves. `idle` means linked to nobody's unfinished work: nothing owed and the last
 * ReadyForQuery said `I` — the only state from which a pool may hand it to another client.
 * Guards read only the event, so transitions are cached like the client machine's.
 */

type Handlers = Partial<Record<ServerEventType | "*", unknown>>;

const CLOSING = "#server.closing";
const CLOSED = "#server.closed";

const lifecycle = {
  Lost: CLOSED,
  Close: CLOSING,
  ProtocolViolation: CLOSING,
  "*": CLOSING,
} as const satisfies Handlers;

const noop = () => {};

/** ReadyForQuery with nothing more owed decides the resting state; with more owed, stay active. */
const readyForQuery = [
  { guard: "moreOwed" as const },
  { guard: "idle" as const, target: "#server.idle" },
  { guard: "inTransaction" as const, target: "#server.inTransaction" },
] as const;

export const serverMachine = setup({
  types: { events: {} as ServerEvent },
  actions: { sendTerminate: noop, offerRelease: noop } satisfies Record<ServerAction["type"], () => void>,
  guards: {
    moreOwed: ({ event }) => event.type === "ReadyForQuery" && event.more,
    idle: ({ event }) => event.type === "ReadyForQuery" && event.status === "I",
    inTransaction: ({ event }) => event.type === "ReadyForQuery" && event.status !== "I",
  },
}).createMachine({
  id: "server",
  initial: "connecting",
  states: {
    connecting: {
      description: "TCP connect to PostgreSQL, within the login deadline.",
      on: { Connected: "authenticating", LoginFailed: CLOSED, Lost: CLOSED, Close: CLOSED },
    },
    authenticating: {
      description: "Startup packet sent; answering PostgreSQL's authentication request.",
      on: { LoggedIn: "idle", LoginFailed: CLOSING, Lost: CLOSED, Close: CLOSING },
    },
    idle: {
      description: "Nothing owed, not in a transaction: the connection may be released to a pool.",
      entry: [{ type: "offerRelease" }],
      on: { ...lifecycle, Request: "active", Reset: "resetting" },
    },
    active: {
      description: "Requests forwarded; responses owed up to a ReadyForQuery.",
      on: { ...lifecycle, Request: {}, ReadyForQuery: readyForQuery },
    },
    inTransaction: {
      description: "The last ReadyForQuery said T or E: bound to its client until the transaction ends.",
      on: { ...lifecycle, Request: "active" },
    },
    resetting: {
      description: "pgwarden's reset query (DISCARD ALL) runs before the connection serves anyone else.",
      on: { ...lifecycle, Request: {}, ReadyForQuery: readyForQuery },
    },
    closing: {
      description: "Terminate sent; waiting for PostgreSQL to close the socket.",
      entry: [{ type: "sendTerminate" }],
      on: { Lost: CLOSED, "*": {} },
    },
    closed: { type: "final" },
  },
});

export type ServerMachine = typeof serverMachine;
