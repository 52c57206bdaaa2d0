import type { Transition } from "../machines/MachineRunner.ts";

/**
 * What the proxy decides and observes, as values: the audit pipeline subscribes here. Emitting
 * must never block or throw into the connection; a sink queues and returns.
 */
export type ProxyEvent =
  | ({ readonly kind: "transition" } & Transition)
  | {
      readonly kind: "connectionClosed";
      readonly conn: string;
      readonly ms: number;
      readonly bytesFromClient: number;
      readonly bytesFromServer: number;
      readonly user: string | undefined;
      readonly database: string | undefined;
    };

export interface EventSink {
  emit(event: ProxyEvent): void;
}

/** The sink until the audit pipeline lands: events go nowhere, at no cost. */
export const discardEvents: EventSink = { emit: () => {} };
