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
  /** TLS is offered on this leg (tls.mode is not disable) and not yet in use. */
  readonly tlsAvailable: boolean;
  /** The client asked for TLS: the host records how, then sends the event whose action runs the handshake. */
  tlsRequested(negotiation: "ssl-request" | "direct", buffered: Buffer): void;
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
 * once it ends, the step reads nothing more. An accepted SSLRequest or direct-TLS ClientHello
 * ends this step; once the handshake is done the host runs a new one on the TLS socket, whose
 * machine state (`startup.bothRefused`) refuses a second encryption request. So nothing after
 * the first packet knows whether it runs over TLS.
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
        // The ClientHello bytes read so far are replayed into the handshake.
        if (this.host.tlsAvailable) this.host.tlsRequested("direct", buf);
        else machine.send(Events.DirectTLS);
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
          const tls = packet.kind === "SSLRequest" && this.host.tlsAvailable;
          const event =
            packet.kind === "GSSENCRequest"
              ? Events.GSSENCRequest
              : tls
                ? Events.SSLRequestTls
                : Events.SSLRequest;
          // A repeated request reads, to PostgreSQL, as a protocol version it lacks.
          if (machine.peek(event).to === "violation") {
            this.stop();
            this.host.failWith(
              event,
              repeatedNegotiation(packet.kind === "SSLRequest" ? RequestCode.ssl : RequestCode.gssenc),
            );
            return;
          }
          // Bytes sent before the answer was read were sent in the clear: an injection, perhaps.
          // With TLS that is judged before `S` is written, so nothing plaintext is taken as encrypted.
          if (tls) {
            this.stop();
            if (rest.length > 0)
              this.host.failWith(Events.ProtocolViolation, dataAfterNegotiation("SSLRequest"));
            else this.host.tlsRequested("ssl-request", rest);
            return;
          }
          machine.send(event);
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
