import { type ConnectionEvent, Events } from "../machines/events.ts";
import { Frontend } from "../protocol/messageTypes.ts";

/** Client message type byte → machine event, as a flat table: the hot path does one index. */
export const clientEvents: readonly ConnectionEvent[] = (() => {
  const table = new Array<ConnectionEvent>(256).fill(Events.UnknownMessage);
  table[Frontend.Query] = Events.Query;
  table[Frontend.Parse] = Events.Parse;
  table[Frontend.Bind] = Events.Bind;
  table[Frontend.Describe] = Events.Describe;
  table[Frontend.Execute] = Events.Execute;
  table[Frontend.Close] = Events.Close;
  table[Frontend.Flush] = Events.Flush;
  table[Frontend.Sync] = Events.Sync;
  table[Frontend.FunctionCall] = Events.FunctionCall;
  table[Frontend.CopyDone] = Events.CopyDone;
  table[Frontend.CopyFail] = Events.CopyFail;
  table[Frontend.Terminate] = Events.Terminate;
  table[Frontend.Password] = Events.AuthResponse;
  return table;
})();

/** Messages after which the server owes one ReadyForQuery. */
export const isSyncPoint = (type: number): boolean =>
  type === Frontend.Query || type === Frontend.FunctionCall || type === Frontend.Sync;

/** Extended-protocol messages that leave the server waiting for a Sync. */
export const isExtended = (type: number): boolean =>
  type === Frontend.Parse ||
  type === Frontend.Bind ||
  type === Frontend.Describe ||
  type === Frontend.Execute ||
  type === Frontend.Close ||
  type === Frontend.Flush;
