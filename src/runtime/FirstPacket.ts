import type { Socket } from "node:net";
import { isPgwardenError, type PgwardenError } from "../errors.ts";
import { type ConnectionEvent, Events } from "../machines/events.ts";
import type { ClientRunner } from "../machines/MachineRunner.ts";
import { RequestCode } from "../protocol/messageTypes.ts";
import {
  dataAfterNegotiation,
  decodeFirstPacket,
  firstPacketLength,
  isSilent,
  type FirstPacket as Packet,
  repeatedNegotiation,
} from "../protocol/startup.ts";

export type StartupPacket = Extract<Packet, { kind: "Startup" }>;
export type CancelPacket = Extract<Packet, { kind: "CancelRequest" }>;

/** How the first-packet step ended, when it ended with something to act on. */
export type FirstPacketOutcome =
  /** The transport the session goes on with (plain today; TLS swaps it), its startup packet, and what followed it. */
  | {
      readonly kind: "startup";
      readonly transport: Socket;
      readonly startup: StartupPacket;
      readonly leftover: Buffer;
    }
  | { readonly kind: "cancel"; readonly cancel: CancelPacket };

/** The client half, as the step sees it: its machine, and where endings and the outcome go. */
export interface FirstPacketHost {
  readonly machine: ClientRunner;
  /** Ends the connection through `event`, with `error` as the final error its actions send. */
  failWith(event: ConnectionEvent, error: PgwardenError): void;
  /** A first packet PostgreSQL answers with silence (bad length, bad cancel packet), or in protocol 2's format. */
  rejectFirstPacket(error: PgwardenError): void;
  firstPacketDone(outcome: FirstPacketOutcome): void;
  internalError(e: unknown): void;
}

/**
 * The untagged first packet(s) of a connection, as their own step: encryption requests go to the
 * machine (whose actions answer them), then the step ends with the transport, the startup packet
 * and any leftover bytes — or a cancel request. At most one packet (10,000 bytes) is buffered;
 * once it ends, the step reads nothing more. The front-door issue swaps the transport here when
 * an SSLRequest is accepted, so nothing after this step knows whether it runs over TLS.
 */
export class FirstPacket {
  transport: Socket;
  private readonly host: FirstPacketHost;
  private buf: Buffer | undefined;

  constructor(transport: Socket, host: FirstPacketHost) {
    this.transport = transport;
    this.host = host;
  }

  start(): void {
    this.transport.on("data", this.onData);
  }

  /** Stops reading for good (the step ended, or the connection is ending). */
  stop(): void {
    this.transport.off("data", this.onData);
    this.buf = undefined;
  }

  private readonly onData = (chunk: Buffer): void => {
    try {
      this.read(chunk);
    } catch (e) {
      this.host.internalError(e);
    }
  };

  private read(chunk: Buffer): void {
    const { machine } = this.host;
    this.buf = this.buf === undefined ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      const buf: Buffer | undefined = this.buf;
      if (buf === undefined) return;
      // Only the very first packet may be a TLS ClientHello; after a refusal 0x16 is a length.
      const len = firstPacketLength(buf, machine.state === "startup.fresh");
      if (len === "need-more") return;
      if (len === "direct-tls") {
        this.stop();
        machine.send(Events.DirectTLS);
        return;
      }
      if (isPgwardenError(len)) {
        this.reject(len);
        return;
      }
      if (buf.length < len) return;
      const packet = decodeFirstPacket(buf.subarray(0, len));
      const rest: Buffer = buf.subarray(len);
      this.buf = rest.length > 0 ? rest : undefined;
      if (isPgwardenError(packet)) {
        this.reject(packet);
        return;
      }
      switch (packet.kind) {
        case "SSLRequest":
        case "GSSENCRequest": {
          const event = packet.kind === "SSLRequest" ? Events.SSLRequest : Events.GSSENCRequest;
          // A repeated request reads, to PostgreSQL, as a protocol version it lacks.
          if (machine.peek(event).to === "violation") {
            this.stop();
            this.host.failWith(
              event,
              repeatedNegotiation(packet.kind === "SSLRequest" ? RequestCode.ssl : RequestCode.gssenc),
            );
            return;
          }
          machine.send(event);
          // Bytes sent before the answer was read were sent in the clear: an injection, perhaps.
          if (rest.length > 0) {
            this.stop();
            this.host.failWith(Events.ProtocolViolation, dataAfterNegotiation(packet.kind));
            return;
          }
          continue;
        }
        case "DirectTLS":
          continue;
        case "CancelRequest":
          this.stop();
          this.host.firstPacketDone({ kind: "cancel", cancel: packet });
          return;
        case "Startup":
          this.stop();
          this.transport.pause();
          this.host.firstPacketDone({
            kind: "startup",
            transport: this.transport,
            startup: packet,
            leftover: rest,
          });
          return;
      }
    }
  }

  private reject(e: PgwardenError): void {
    this.stop();
    if (isSilent(e) || e.code === "PGW_UNSUPPORTED_PROTOCOL_V2") this.host.rejectFirstPacket(e);
    else this.host.failWith(Events.ProtocolViolation, e);
  }
}
