/**
 * Errors of the audit trail, as values. Codes are stable; messages never hold key material.
 */
export type AuditErrorCode =
  | "PGW_AUDIT_INVALID_EVENT"
  | "PGW_AUDIT_KEY"
  | "PGW_AUDIT_SIGNER"
  | "PGW_AUDIT_CHAIN"
  | "PGW_AUDIT_IO"
  | "PGW_AUDIT_TAMPERED";

export interface AuditError {
  readonly _tag: "AuditError";
  readonly code: AuditErrorCode;
  readonly message: string;
}

export const auditError = (code: AuditErrorCode, message: string): AuditError => ({
  _tag: "AuditError",
  code,
  message,
});

export const isAuditError = (u: unknown): u is AuditError =>
  typeof u === "object" && u !== null && (u as { _tag?: unknown })._tag === "AuditError";
