import { createHash, createHmac, pbkdf2Sync } from "node:crypto";

/** SHA-256 output size: the length of every SCRAM key, signature and proof. */
export const SCRAM_KEY_LENGTH = 32;

export const sha256 = (data: Buffer): Buffer => createHash("sha256").update(data).digest();

export const hmacSha256 = (key: Buffer, data: Buffer | string): Buffer =>
  createHmac("sha256", key).update(data).digest();

export const saltedPassword = (password: Buffer, salt: Buffer, iterations: number): Buffer =>
  pbkdf2Sync(password, salt, iterations, SCRAM_KEY_LENGTH, "sha256");

export const clientKeyOf = (salted: Buffer): Buffer => hmacSha256(salted, "Client Key");

export const serverKeyOf = (salted: Buffer): Buffer => hmacSha256(salted, "Server Key");

export const xor = (a: Buffer, b: Buffer): Buffer => {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
};

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Strict, canonical base64 with padding: anything Buffer.from would silently skip or
 * reinterpret (whitespace, base64url, missing padding, non-zero pad bits) is rejected.
 */
export const decodeBase64 = (text: string): Buffer | undefined => {
  if (!BASE64.test(text)) return undefined;
  const bytes = Buffer.from(text, "base64");
  return bytes.toString("base64") === text ? bytes : undefined;
};
