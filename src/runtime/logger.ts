import pino, { type Logger } from "pino";

/** Paths pino blanks out wherever they appear: secrets never reach logs. */
export const redactedPaths = [
  "password",
  "*.password",
  "*.*.password",
  "secret",
  "*.secret",
  "verifier",
  "*.verifier",
  "proof",
  "*.proof",
];

export const createLogger = (level: string, destination?: pino.DestinationStream): Logger =>
  pino(
    {
      name: "pgwarden",
      level,
      redact: { paths: redactedPaths, censor: "[redacted]" },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ dest: 2, sync: false }),
  );
