import { setup } from "xstate";
import type { ClientAction, DeadlinePhase, FinalError } from "./actions.ts";
import type { ConnectionEvent, ConnectionEventType } from "./events.ts";

/**
 * The life of one client connection, from the first packet to the closed socket.
 *
 * Only control messages reach it; DataRow and CopyData never do. Every state lists the events
 * it accepts; anything else is a protocol violation (the `*` edges). Transitions carry the
 * actions the runtime performs (see actions.ts): answering, authenticating, connecting upstream,
 * sending the final error, closing legs, arming deadlines. Guards read only the event, never
 * context, so a transition — target and actions — is a pure function of (state, event) and is
 * cached (see MachineRunner).
 */

type Handlers = Partial<Record<ConnectionEventType | "*", unknown>>;
type Act = { readonly type: ClientAction["type"]; readonly params?: object };

const VIOLATION = "#connection.violation";
const TERMINATING = "#connection.terminating";

const sendError = (error: FinalError): Act => ({ type: "sendError", params: { error } });
const clearDeadline = (phase: DeadlinePhase): Act => ({ type: "clearDeadline", params: { phase } });
/** An ending: optional actions on the way, then terminating's entry closes both legs. */
const end = (...actions: Act[]) => ({ target: TERMINATING, actions });

/**
 * Ways out that exist in every live state once the startup packet is in. The `*` edge is a
 * violation: 08P01 naming the message, then both legs close.
 */
const lifecycle = (timeout: FinalError) =>
  ({
    ClientClosed: end(),
    ServerClosed: end(sendError("connectionLost")),
    ServerFatal: end(),
    Shutdown: end(sendError("adminShutdown")),
    Timeout: end(sendError(timeout)),
    ProtocolViolation: VIOLATION,
    UnknownMessage: VIOLATION,
    "*": VIOLATION,
  }) as const satisfies Handlers;

/** Once relaying, a client that vanishes mid-query has its query cancelled upstream. */
const busyLifecycle = {
  ...lifecycle("given"),
  ClientClosed: end({ type: "cancelQuery" }),
} as const satisfies Handlers;

/** A repeated encryption request: PostgreSQL refuses it as an unknown protocol version. */
const repeated = VIOLATION;

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

/** Actions are executed by the runtime; the machine only names them. */
const noop = () => {};

export const connectionMachine = setup({
  types: { events: {} as ConnectionEvent },
  actions: {
    armDeadline: noop,
    clearDeadline: noop,
    refuseEncryption: noop,
    acceptTls: noop,
    forwardCancel: noop,
    authenticate: noop,
    sendAuthOk: noop,
    connectServer: noop,
    startRelay: noop,
    sendError: noop,
    cancelQuery: noop,
    stopReading: noop,
    closeClient: noop,
    closeServer: noop,
  } satisfies Record<ClientAction["type"], () => void>,
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
  // One deadline covers everything before the first ReadyForQuery, upstream login included.
  entry: [{ type: "armDeadline", params: { phase: "login" } }],
  states: {
    startup: {
      description:
        "Waiting for the untagged first packet. Each encryption request may be refused once, as PostgreSQL allows.",
      initial: "fresh",
      states: {
        fresh: {
          on: {
            SSLRequest: [
              { guard: "tlsAvailable", target: "#connection.tls", actions: [{ type: "acceptTls" }] },
              { target: "sslRefused", actions: [{ type: "refuseEncryption" }] },
            ],
            GSSENCRequest: { target: "gssRefused", actions: [{ type: "refuseEncryption" }] },
            DirectTLS: [
              { guard: "tlsAvailable", target: "#connection.tls", actions: [{ type: "acceptTls" }] },
              end(),
            ],
          },
        },
        sslRefused: {
          on: {
            GSSENCRequest: { target: "bothRefused", actions: [{ type: "refuseEncryption" }] },
            SSLRequest: repeated,
          },
        },
        gssRefused: {
          on: {
            SSLRequest: [
              { guard: "tlsAvailable", target: "#connection.tls", actions: [{ type: "acceptTls" }] },
              { target: "bothRefused", actions: [{ type: "refuseEncryption" }] },
            ],
            GSSENCRequest: repeated,
          },
        },
        bothRefused: { on: { SSLRequest: repeated, GSSENCRequest: repeated } },
      },
      on: {
        ClientClosed: end(),
        // PostgreSQL says nothing to a client that never finished its first packet.
        Timeout: end(),
        Shutdown: end(),
        StartupInvalid: end(),
        ProtocolViolation: VIOLATION,
        "*": VIOLATION,
        Startup: { target: "authenticating", actions: [{ type: "authenticate" }] },
        CancelRequest: { target: "cancelling", actions: [{ type: "forwardCancel" }] },
      },
    },
    tls: {
      description: "TLS handshake on the client leg; the startup packet follows inside TLS.",
      // Nothing plaintext can be written mid-handshake: every ending here is silent, as PostgreSQL's.
      on: {
        ClientClosed: end(),
        Timeout: end(),
        Shutdown: end(),
        TlsEstablished: "startup.bothRefused",
        TlsFailed: end(),
        ProtocolViolation: end(),
        "*": end(),
      },
    },
    cancelling: {
      description:
        "A CancelRequest was forwarded; its connection closes once PostgreSQL has closed the upstream one.",
      on: { CancelDone: end(), ClientClosed: end(), Timeout: end(), Shutdown: end(), "*": {} },
    },
    authenticating: {
      initial: "client",
      states: {
        client: {
          description: "pgwarden authenticates the client (SCRAM-SHA-256, or trust).",
          on: {
            ...lifecycle("loginTimeout"),
            AuthResponse: {},
            ClientAuthOk: {
              target: "upstream",
              actions: [{ type: "sendAuthOk" }, { type: "connectServer" }],
            },
            ClientAuthFailed: end(sendError("given")),
          },
        },
        upstream: {
          description: "pgwarden logs in to PostgreSQL with its own credentials.",
          on: {
            ...lifecycle("loginTimeout"),
            UpstreamReady: {
              target: "#connection.ready.idle",
              actions: [
                clearDeadline("login"),
                { type: "startRelay" },
                { type: "armDeadline", params: { phase: "session" } },
              ],
            },
            UpstreamFailed: end(sendError("given")),
          },
        },
      },
    },
    ready: {
      description: "Nothing outstanding; the substate mirrors the last ReadyForQuery status.",
      initial: "idle",
      states: { idle: {}, inTransaction: {}, failed: {} },
      on: {
        ...lifecycle("given"),
        Query: "busy.simpleQuery",
        FunctionCall: "busy.simpleQuery",
        ...to(extendedMessages, "busy.extendedQuery"),
        // PostgreSQL drops copy messages that arrive after it ended a COPY on error.
        ...accept("CopyDone", "CopyFail"),
        Terminate: end(),
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
                ...busyLifecycle,
                CopyDone: "done",
                CopyFail: "done",
                ...accept("Flush", "Sync"),
                // PostgreSQL ends COPY IN itself on a bad row: ErrorResponse, then ReadyForQuery.
                ReadyForQuery: readyForQuery("#connection.busy.copy.done"),
                Terminate: end(),
              },
            },
            out: {
              description: "COPY TO STDOUT: the server streams; client requests queue behind it.",
              on: { ServerCopyDone: "done", ...accept(...clientRequests) },
            },
            both: {
              description: "CopyBoth (replication): both sides stream until each sends CopyDone.",
              on: {
                ...busyLifecycle,
                CopyDone: "out",
                CopyFail: "done",
                ServerCopyDone: "in",
                ...accept("Flush", "Sync"),
                ReadyForQuery: readyForQuery("#connection.busy.copy.done"),
                Terminate: end(),
              },
            },
            done: { description: "The copy stream is over; its result is still to come." },
          },
          on: { ReadyForQuery: readyForQuery("#connection.busy.copy.done") },
        },
      },
      on: {
        ...busyLifecycle,
        Query: ".simpleQuery",
        FunctionCall: ".simpleQuery",
        ...to(extendedMessages, ".extendedQuery"),
        CopyInResponse: ".copy.in",
        CopyOutResponse: ".copy.out",
        CopyBothResponse: ".copy.both",
        ...accept("ServerCopyDone", "CopyDone", "CopyFail"),
        ReadyForQuery: readyForQuery(undefined),
        Terminate: end(),
      },
    },
    violation: {
      description: "A protocol violation: nothing more is read, 08P01 is sent and both legs close.",
      entry: [
        { type: "stopReading" },
        sendError("given"),
        { type: "closeClient" },
        { type: "closeServer" },
        { type: "armDeadline", params: { phase: "linger" } },
      ],
      on: { Closed: "closed", "*": {} },
    },
    terminating: {
      description:
        "Closing both legs after Terminate, an error, a shutdown or a lost peer; then a short linger.",
      entry: [
        { type: "stopReading" },
        { type: "closeClient" },
        { type: "closeServer" },
        { type: "armDeadline", params: { phase: "linger" } },
      ],
      on: { Closed: "closed", "*": {} },
    },
    closed: { type: "final" },
  },
});

export type ConnectionMachine = typeof connectionMachine;
