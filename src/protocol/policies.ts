import { lengthTable, type ScanPolicy, typeSet } from "./MessageScanner.ts";
import { AUTH_MESSAGE_LIMIT, Backend, Frontend, SMALL_MESSAGE_LIMIT } from "./messageTypes.ts";

/** Client messages PostgreSQL lets grow large; every other type is capped at 10,000 bytes like PostgreSQL. */
const largeClientTypes = typeSet(
  Frontend.Query,
  Frontend.Parse,
  Frontend.Bind,
  Frontend.FunctionCall,
  Frontend.CopyData,
);

const frontendTypes = Object.values(Frontend).filter((t) => t !== Frontend.Password);
/** After authentication PostgreSQL knows these client types; 'p' belongs to the authentication phase. */
export const clientSessionTypes = typeSet(...frontendTypes);
/** During authentication only authentication responses are legal. */
const clientAuthTypes = typeSet(Frontend.Password);
/**
 * After the login PostgreSQL never asks for authentication again, nor sends a new cancel key or
 * protocol version: from a server that does (a hostile or broken upstream asking the client for a
 * password, or handing it the backend's own cancel key), they are a violation, never relayed.
 */
const LOGIN_ONLY: ReadonlySet<number> = new Set([
  Backend.Authentication,
  Backend.BackendKeyData,
  Backend.NegotiateProtocolVersion,
]);
const serverTypes = typeSet(...Object.values(Backend).filter((t) => !LOGIN_ONLY.has(t)));
const serverStartupTypes = typeSet(
  Backend.Authentication,
  Backend.ErrorResponse,
  Backend.BackendKeyData,
  Backend.ParameterStatus,
  Backend.NoticeResponse,
  Backend.NegotiateProtocolVersion,
  Backend.ReadyForQuery,
);

/**
 * Server-side limits: streamed messages are never buffered, so only PostgreSQL's own 1 GB field
 * limit applies to them; every other type is capped at `maxMessageBytes`.
 */
const serverLengths = (streamed: Uint8Array, maxMessageBytes: number): Uint32Array =>
  lengthTable((type) => (streamed[type] === 1 ? 0x7fffffff : maxMessageBytes));

const clientMaxLength = (maxMessageBytes: number) => (type: number) =>
  largeClientTypes[type] === 1
    ? maxMessageBytes
    : type === Frontend.Password
      ? AUTH_MESSAGE_LIMIT
      : SMALL_MESSAGE_LIMIT;

/**
 * Policies are built once per message limit and shared by every connection: a scanner keeps a
 * reference, and an idle client holds no policy of its own.
 */
const shared = (
  build: (maxMessageBytes: number) => ScanPolicy,
): ((maxMessageBytes: number) => ScanPolicy) => {
  const byLimit = new Map<number, ScanPolicy>();
  return (maxMessageBytes) => {
    let p = byLimit.get(maxMessageBytes);
    if (p === undefined) {
      p = build(maxMessageBytes);
      byLimit.set(maxMessageBytes, p);
    }
    return p;
  };
};

/** Client stream once the session is ready: CopyData is the data path. */
export const clientSessionPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    known: clientSessionTypes,
    sender: "frontend",
    // The relay judges client messages by their type alone; audit and policy will read Query and Parse.
    inspect: typeSet(),
    streamed: typeSet(Frontend.CopyData),
    maxLength: lengthTable(clientMaxLength(maxMessageBytes)),
  }),
);

/** Audit on: the statement requests' bytes reach the handler, everything else is still judged by type. */
export const auditedClientSessionPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    ...clientSessionPolicy(maxMessageBytes),
    inspect: typeSet(Frontend.Query, Frontend.Parse, Frontend.Bind, Frontend.Execute, Frontend.FunctionCall),
  }),
);

/** Client stream during authentication: everything is held so nothing slips through unchecked. */
export const clientAuthPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    known: clientAuthTypes,
    sender: "frontend",
    streamed: typeSet(),
    maxLength: lengthTable(clientMaxLength(maxMessageBytes)),
  }),
);

/**
 * Server messages the relay acts on: ReadyForQuery, the COPY switches and ErrorResponse (a FATAL
 * ends the session). Every other server message — rows, but also RowDescription, CommandComplete
 * and the rest — is streamed: forwarded without a handler call or a view of its own, never held.
 */
const serverHandledTypes = [
  Backend.ReadyForQuery,
  Backend.CopyInResponse,
  Backend.CopyOutResponse,
  Backend.CopyBothResponse,
  Backend.CopyDone,
  Backend.ErrorResponse,
];
const serverStreamedTypes = typeSet(
  ...Object.values(Backend).filter((t) => !(serverHandledTypes as number[]).includes(t)),
);

/** Server stream once ready: only what changes the session's state is held and handled. */
export const serverSessionPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    known: serverTypes,
    sender: "backend",
    streamed: serverStreamedTypes,
    maxLength: serverLengths(serverStreamedTypes, maxMessageBytes),
  }),
);

/** Server stream during its startup: small messages only. */
export const serverStartupPolicy: ScanPolicy = {
  known: serverStartupTypes,
  sender: "backend",
  streamed: typeSet(),
  maxLength: lengthTable(() => 1_048_576),
};

/** What ends an Execute besides an error: the tracker pairs each with its request. */
const executeEndings: ReadonlySet<number> = new Set([
  Backend.CommandComplete,
  Backend.PortalSuspended,
  Backend.EmptyQueryResponse,
]);
const auditedServerStreamedTypes = typeSet(
  ...Object.values(Backend).filter(
    (t) => !executeEndings.has(t) && !(serverHandledTypes as number[]).includes(t),
  ),
);

/**
 * Audit on: CommandComplete, PortalSuspended and EmptyQueryResponse are held too — the command
 * tag and row count of each statement, and which Execute each answer ends.
 */
export const auditedServerSessionPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    known: serverTypes,
    sender: "backend",
    streamed: auditedServerStreamedTypes,
    maxLength: serverLengths(auditedServerStreamedTypes, maxMessageBytes),
  }),
);

/** Replies pooled modes match to requests: prepared statements, session state, answered-locally replies. */
const pooledServerHandledTypes = [
  ...serverHandledTypes,
  Backend.ParseComplete,
  Backend.BindComplete,
  Backend.CloseComplete,
  Backend.ParameterDescription,
  Backend.RowDescription,
  Backend.NoData,
  Backend.CommandComplete,
  Backend.EmptyQueryResponse,
  Backend.PortalSuspended,
  Backend.ParameterStatus,
  Backend.FunctionCallResponse,
];
const pooledServerStreamedTypes = typeSet(
  ...Object.values(Backend).filter((t) => !(pooledServerHandledTypes as number[]).includes(t)),
);

/**
 * Pooled modes: every reply that ends a request is held, so replies pgwarden injected are
 * skipped and its own answers are put in their place; rows and COPY data still stream.
 */
export const pooledServerSessionPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    known: serverTypes,
    sender: "backend",
    streamed: pooledServerStreamedTypes,
    maxLength: serverLengths(pooledServerStreamedTypes, maxMessageBytes),
  }),
);

/** Pooled modes: the statement requests' bytes reach the handler (names are mapped, SQL classified). */
export const pooledClientSessionPolicy = shared(
  (maxMessageBytes: number): ScanPolicy => ({
    ...clientSessionPolicy(maxMessageBytes),
    inspect: typeSet(
      Frontend.Query,
      Frontend.Parse,
      Frontend.Bind,
      Frontend.Execute,
      Frontend.Describe,
      Frontend.Close,
      Frontend.FunctionCall,
    ),
  }),
);
