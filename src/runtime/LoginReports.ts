import { SessionState } from "../pool/SessionState.ts";
import { decodeParameterStatus, encodeParameterStatus } from "../protocol/backend.ts";
import { Backend } from "../protocol/messageTypes.ts";

/**
 * What PostgreSQL reported at login (its ParameterStatus messages), shared by every server
 * connection whose login reported the same bytes. Logins of one pool report the same dozen or so
 * parameters with the same values, so a thousand connections hold one parsed copy instead of a
 * thousand maps, a few dozen strings each and the buffers they were read from. Bounded: a new
 * report beyond the limit starts the table afresh rather than growing it.
 */
export interface LoginReport {
  /** Name → value, as reported. Shared: copy before changing it. */
  readonly reported: ReadonlyMap<string, string>;
  /** The same as session settings (tracked parameters only). Shared: adopt it, do not change it. */
  readonly settings: SessionState;
  /** `reported` as the ParameterStatus messages a client is told at its startup, in one buffer. */
  readonly encoded: Buffer;
}

/** Every parameter as a ParameterStatus message, in the map's order, in one buffer. */
export const encodeReported = (reported: ReadonlyMap<string, string>): Buffer =>
  Buffer.concat([...reported].map(([name, value]) => encodeParameterStatus(name, value)));

const MAX_REPORTS = 64;
const reports = new Map<string, LoginReport>();

/** The shared report for these login messages (ParameterStatus among them; others are ignored). */
export const loginReport = (messages: readonly Buffer[]): LoginReport => {
  let key = "";
  for (const m of messages) if (m[0] === Backend.ParameterStatus) key += m.toString("latin1");
  let report = reports.get(key);
  if (report === undefined) {
    const reported = new Map<string, string>();
    const settings = new SessionState();
    for (const m of messages) {
      if (m[0] !== Backend.ParameterStatus) continue;
      const p = decodeParameterStatus(m);
      if (!("name" in p)) continue;
      reported.set(p.name, p.value);
      settings.onParameterStatus(p.name, p.value);
    }
    report = { reported, settings, encoded: encodeReported(reported) };
    if (reports.size >= MAX_REPORTS) reports.clear();
    reports.set(key, report);
  }
  return report;
};
