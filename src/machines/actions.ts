/**
 * What a machine's transitions ask the runtime to do. Plain tagged values: XState returns them
 * with each transition, `MachineRunner` caches them beside the target state, and the connection
 * that hosts the machine executes them in order. Tests assert on them and diagrams print them.
 */

/** Which final error `sendError` sends; "given" is the error that travelled beside the event. */
export type FinalError = "given" | "adminShutdown" | "connectionLost" | "loginTimeout";

/**
 * Deadlines a connection arms: everything before the first ReadyForQuery, the session controls
 * (idle timeout and maximum lifetime, one timer) once relaying, and the last linger.
 */
export type DeadlinePhase = "login" | "session" | "linger";

export type ClientAction =
  | { readonly type: "armDeadline"; readonly params: { readonly phase: DeadlinePhase } }
  | { readonly type: "clearDeadline"; readonly params: { readonly phase: DeadlinePhase } }
  /** Answer SSLRequest or GSSENCRequest with `N`. */
  | { readonly type: "refuseEncryption" }
  /** Answer SSLRequest with `S` (or take a direct-TLS ClientHello) and run the handshake on the same socket. */
  | { readonly type: "acceptTls" }
  /** Look up the cancel key and forward it; the cancel connection closes once PostgreSQL's does. */
  | { readonly type: "forwardCancel" }
  /** Apply the startup boundary and begin client authentication. */
  | { readonly type: "authenticate" }
  | { readonly type: "sendAuthOk" }
  /** Open a server connection and log in upstream. */
  | { readonly type: "connectServer" }
  /** Send BackendKeyData and ReadyForQuery, link the halves and start relaying. */
  | { readonly type: "startRelay" }
  | { readonly type: "sendError"; readonly params: { readonly error: FinalError } }
  /** The client vanished mid-query: cancel it upstream so the backend stops working for nobody. */
  | { readonly type: "cancelQuery" }
  /** Read nothing more from the client: what follows a violation is not looked at. */
  | { readonly type: "stopReading" }
  | { readonly type: "closeClient" }
  | { readonly type: "closeServer" };

export type ServerAction =
  /** Send Terminate and end the server leg. */
  | { readonly type: "sendTerminate" }
  /** Nothing is owed and the last ReadyForQuery said `I`: a pool may take the connection back. */
  | { readonly type: "offerRelease" };

export type ActionType<A extends { type: string }> = A["type"];
