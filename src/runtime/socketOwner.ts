import type { Socket } from "node:net";

/**
 * What owns a socket and hears its events: a client or a server connection. The owner is kept
 * on the socket, so each listener is one function for every socket rather than a closure per
 * connection (thousands of idle connections would each hold theirs).
 */
export interface SocketOwner {
  socketError(e: Error): void;
  socketClosed(): void;
  socketData(chunk: Buffer): void;
}

const kOwner = Symbol("pgwarden.socketOwner");
type Owned = Socket & { [kOwner]?: SocketOwner };

function onOwnedError(this: Owned, e: Error): void {
  this[kOwner]?.socketError(e);
}

function onOwnedClose(this: Owned): void {
  this[kOwner]?.socketClosed();
}

function onOwnedData(this: Owned, chunk: Buffer): void {
  this[kOwner]?.socketData(chunk);
}

/** `owner` hears the socket's errors and its close from now on. */
export const own = (socket: Socket, owner: SocketOwner): void => {
  (socket as Owned)[kOwner] = owner;
  socket.on("error", onOwnedError);
  socket.on("close", onOwnedClose);
};

/** Starts (or stops) handing what the socket reads to its owner. */
export const relayData = (socket: Socket, relay: boolean): void => {
  if (relay) socket.on("data", onOwnedData);
  else socket.off("data", onOwnedData);
};
