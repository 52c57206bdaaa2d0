import type { Socket } from "node:net";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { decodeCommandComplete, decodeFields } from "../protocol/backend.ts";
import { encodeQuery, encodeTerminate } from "../protocol/frontend.ts";
import { lengthTable, typeSet } from "../protocol/MessageScanner.ts";
import { Backend } from "../protocol/messageTypes.ts";
import { MessageStream } from "./MessageStream.ts";

const policy = {
  known: typeSet(...Object.values(Backend)),
  sender: "backend",
  streamed: typeSet(),
  maxLength: lengthTable(() => 1_048_576),
};

/**
 * Runs one simple Query on a logged-in connection and returns the command tags: for pgwarden's
 * own set-up statements (embedded mode), never for client traffic. Rows are not returned.
 */
export const adminQuery = async (socket: Socket, sql: string): Promise<string[] | PgwardenError> => {
  const stream = new MessageStream(socket, policy);
  socket.write(encodeQuery(sql));
  const tags: string[] = [];
  let failure: PgwardenError | undefined;
  for (;;) {
    const msg = await stream.next();
    if (msg === "closed")
      return pgwardenError("PGW_UPSTREAM_CLOSED", SqlState.connectionFailure, "PostgreSQL closed");
    if (isPgwardenError(msg)) return msg;
    if (msg[0] === Backend.CommandComplete) {
      const tag = decodeCommandComplete(msg);
      if (!isPgwardenError(tag)) tags.push(tag);
    } else if (msg[0] === Backend.ErrorResponse) {
      const f = decodeFields(msg);
      failure = pgwardenError(
        "PGW_INTERNAL",
        SqlState.internalError,
        isPgwardenError(f) ? "set-up statement failed" : `${f.get("C")}: ${f.get("M")}`,
      );
    } else if (msg[0] === Backend.ReadyForQuery) {
      stream.handOff();
      return failure ?? tags;
    }
  }
};

/** Ends an admin connection politely. */
export const closeAdmin = (socket: Socket): void => {
  socket.end(encodeTerminate());
  setTimeout(() => socket.destroy(), 1000).unref();
};
