import { setup } from "xstate";
import type { ConnectionEvent, ConnectionEventType } from "./events.ts";

/**
 * The life of one client connection, from the first packet to the closed socket.
 *
 * Only control messages reach it; DataRow and CopyData never do. Every state lists the events
 * it accepts; anything else is a protocol violation (the `*` edges), which the runtime answers
 * with 08P01 and a closed connection. Guards read only the event, never context, so a
 * transition is a pure function of (state, event) and can be cached (see MachineRunner).
 */

type Handlers = Partial<Record<ConnectionEventType | "*", unknown>>;

const VIOLATION = "#connection.violation";
const TERMINATING = "#connection.terminating";
const CLOSED = "#connection.closed";

/** Ways out that exist in every live state. */
const lifecycle = {
  ClientClosed: CLOSED,
  ServerClosed: TERMINATING,
  Shutdown: TERMINATING,
  Timeout: TERMINATING,
  ProtocolViolation: VIOLATION,
  UnknownMessage: VIOLATION,
  "*": VIOLATION,
} as const satisfies Handlers;

/** Accept these events without changing state. */
const accept = <T extends ConnectionEventType>(...types: T[]): Record<T, object> =>
  Object.fromEntries(types.map((t) => [t, {}])) as Record<T, object>;

const extendedMessages = ["Parse", "Bind", "Describe", "Execute", "Close", "Flush", "Sync"] as const;
const clientRequests = ["Query", "FunctionCall", ...extendedMessages] as const;
const to = <T extends ConnectionEventType>(types: readonly T[], target: string): Record<T, string> =>
  Object.fromEntries(types.map((t) => [t, target])) as Record<T, string>;

/** ReadyForQuery ends a busy spell unless more results are still owed to the client. */
const readyForQuery = (whileMore: string | undefined) =>
  [
    whileMore === undefined
      ? { guard: "moreOutstanding" as const }
      : { guard: "moreOutstanding" as const, target: whileMore },
    { guard: "idle", target: "#connection.ready.idle" },
    { guard: "inTransaction", target: "#connection.ready.inTransaction" },
    { guard: "failedTransaction", target: "#connection.ready.failed" },
  ] as const;

export const connectionMachine = setup({
  types: { events: {} as ConnectionEvent },
  guards: {
    tlsAvailable: ({ event }) => "tlsAvailable" in event && event.tlsAvailable,
    moreOutstanding: ({ event }) => event.type === "ReadyForQuery" && event.more,
    idle: ({ event }) => event.type === "ReadyForQuery" && event.status === "I",
    inTransaction: ({ event }) => event.type === "ReadyForQuery" && event.status === "T",
    failedTransaction: ({ event }) => event.type === "ReadyForQuery" && event.status === "E",
  },
}).createMachine({
  id: "connection",
  initial: "startup",
  states: {
    startup: {
      description: "Waiting for the untagged first packet; SSL/GSS requests are answered here.",
      on: {
        ...lifecycle,
        SSLRequest: [{ guard: "tlsAvailable", target: "tls" }, {}],
        GSSENCRequest: {},
        DirectTLS: [{ guard: "tlsAvailable", target: "tls" }, { target: "closed" }],
        Startup: "authenticating",
        CancelRequest: "closed",
      },
    },
    tls: {
      description: "TLS handshake on the client leg; the startup packet follows inside TLS.",
      on: { ...lifecycle, TlsEstablished: "startup", TlsFailed: "closed" },
    },
    authenticating: {
      initial: "client",
      states: {
        client: {
          description: "pgwarden authenticates the client (SCRAM-SHA-256, or trust).",
          on: { ...lifecycle, AuthResponse: {}, ClientAuthOk: "upstream", ClientAuthFailed: TERMINATING },
        },
        upstream: {
          description: "pgwarden logs in to PostgreSQL with its own credentials.",
          on: { ...lifecycle, UpstreamReady: "#connection.ready.idle", UpstreamFailed: TERMINATING },
        },
      },
    },
    ready: {
      description: "Nothing outstanding; the substate mirrors the last ReadyForQuery status.",
      initial: "idle",
      states: { idle: {}, inTransaction: {}, failed: {} },
      on: {
        ...lifecycle,
        Query: "busy.simpleQuery",
        FunctionCall: "busy.simpleQuery",
        ...to(extendedMessages, "busy.extendedQuery"),
        // PostgreSQL drops copy messages that arrive after it ended a COPY on error.
        ...accept("CopyDone", "CopyFail"),
        Terminate: "terminating",
      },
    },
    busy: {
      description: "Requests sent; waiting for results up to the ReadyForQuery that ends them.",
      initial: "simpleQuery",
      states: {
        simpleQuery: {},
        extendedQuery: {},
        copy: {
          initial: "in",
          states: {
            in: {
              description: "COPY FROM STDIN: only CopyData, CopyDone, CopyFail, Flush, Sync are legal.",
              on: {
                ...lifecycle,
                CopyDone: "done",
                CopyFail: "done",
                ...accept("Flush", "Sync"),
                // PostgreSQL ends COPY IN itself on a bad row: ErrorResponse, then ReadyForQuery.
                ReadyForQuery: readyForQuery("#connection.busy.copy.done"),
                Terminate: TERMINATING,
              },
            },
            out: {
              description: "COPY TO STDOUT: the server streams; client requests queue behind it.",
              on: { ServerCopyDone: "done", ...accept(...clientRequests) },
            },
            both: {
              description: "CopyBoth (replication): both sides stream until each sends CopyDone.",
              on: {
                ...lifecycle,
                CopyDone: "out",
                CopyFail: "done",
                ServerCopyDone: "in",
                ...accept("Flush", "Sync"),
                ReadyForQuery: readyForQuery("#connection.busy.copy.done"),
                Terminate: TERMINATING,
              },
            },
            done: { description: "The copy stream is over; its result is still to come." },
          },
          on: { ReadyForQuery: readyForQuery("#connection.busy.copy.done") },
        },
      },
      on: {
        ...lifecycle,
        Query: ".simpleQuery",
        FunctionCall: ".simpleQuery",
        ...to(extendedMessages, ".extendedQuery"),
        CopyInResponse: ".copy.in",
        CopyOutResponse: ".copy.out",
        CopyBothResponse: ".copy.both",
        ...accept("ServerCopyDone", "CopyDone", "CopyFail"),
        ReadyForQuery: readyForQuery(undefined),
        Terminate: "terminating",
      },
    },
    violation: {
      description: "A protocol violation: 08P01 is sent and the connection closed.",
      on: { Closed: "closed", ClientClosed: "closed", "*": {} },
    },
    terminating: {
      description: "Closing both legs: after Terminate, an error, a shutdown or a lost peer.",
      on: { Closed: "closed", ClientClosed: "closed", "*": {} },
    },
    closed: { type: "final" },
  },
});

export type ConnectionMachine = typeof connectionMachine;
