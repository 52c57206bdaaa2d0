import pg from "pg";
import { inject } from "vitest";

export interface PostgresInfo {
  readonly host: string;
  readonly port: number;
  /** Superuser and its password. */
  readonly user: string;
  readonly password: string;
  /** Password of the u_password, u_md5 and u_scram roles. */
  readonly rolePassword: string;
  readonly dir: string;
  /** Non-superuser role (password `rolePassword`) that owns the database `appDatabase`. */
  readonly appRole: string;
  readonly appDatabase: string;
}

declare module "vitest" {
  export interface ProvidedContext {
    postgres: PostgresInfo;
  }
}

export const postgresInfo = (): PostgresInfo => inject("postgres");

/** A direct superuser connection, for setting up and checking from the server's side. */
export const directClient = async (): Promise<pg.Client> => {
  const i = postgresInfo();
  const c = new pg.Client({
    host: i.host,
    port: i.port,
    user: i.user,
    password: i.password,
    database: "postgres",
  });
  await c.connect();
  return c;
};
