import { isPgwardenError, type PgwardenError } from "../../src/errors.ts";

/** RFC 7677 §3 example exchange: user "user", password "pencil". */
export const RFC7677 = {
  password: "pencil",
  username: "user",
  clientNonce: "rOprNGfwEbeRWgbNEkqO",
  serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
  salt: Buffer.from("W22ZaJ0SNY7soEsUEjb6gQ==", "base64"),
  iterations: 4096,
  clientFirst: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
  serverFirst: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
  clientFinal:
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
  serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
} as const;

/** Unwraps a value the test expects to be a success. */
export const must = <A>(value: A | PgwardenError): A => {
  if (isPgwardenError(value)) throw new Error(`unexpected error ${value.code}: ${value.message}`);
  return value;
};

/** Unwraps a value the test expects to be an error. */
export const mustFail = <A>(value: A | PgwardenError): PgwardenError => {
  if (!isPgwardenError(value)) throw new Error(`expected an error, got ${JSON.stringify(value)}`);
  return value;
};
