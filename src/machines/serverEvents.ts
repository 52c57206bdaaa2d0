import { ReadyForQuery, type ReadyForQueryEvent, TxStatus } from "./events.ts";

/**
 * Events of the server-connection machine: interned constants, like the client machine's.
 * ReadyForQuery is the client machine's own event: `more` then means more is owed by the server.
 */

const ev = <const T extends { type: string }>(e: T): Readonly<T> => Object.freeze(e);

export const ServerEvents = {
  Connected: ev({ type: "Connected" }),
  LoggedIn: ev({ type: "LoggedIn" }),
  LoginFailed: ev({ type: "LoginFailed" }),
  /** A sync point (Query, FunctionCall, Sync) was forwarded: one more ReadyForQuery is owed. */
  Request: ev({ type: "Request" }),
  /** pgwarden sends its reset query before reuse. */
  Reset: ev({ type: "Reset" }),
  Close: ev({ type: "Close" }),
  ProtocolViolation: ev({ type: "ProtocolViolation" }),
  Lost: ev({ type: "Lost" }),
} as const;

export type ServerEvent = (typeof ServerEvents)[keyof typeof ServerEvents] | ReadyForQueryEvent;
export type ServerEventType = ServerEvent["type"];

export const allServerEvents: readonly ServerEvent[] = [
  ...Object.values(ServerEvents),
  ...TxStatus.flatMap((s) => ReadyForQuery[s]),
];
