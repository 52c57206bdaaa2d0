import { encodeClose, encodeParse } from "../protocol/frontend.ts";

/**
 * Protocol-level prepared statements in transaction mode. A client's statement names are its
 * own; on the server every distinct (query text, parameter types) gets one pgwarden name shared
 * by all clients of the pool, and each server connection remembers, in LRU order, which of those
 * it has prepared. Pure bookkeeping: the relay sends what these answers say, in the order given.
 *
 * The unnamed statement ("") is passed through unchanged: it lives only on the server connection
 * that parsed it, which the client holds until Sync in the usual Parse/Bind/Execute/Sync pipeline.
 */

export type ClientId = string | number;
export type ServerId = string | number;

export interface StatementError {
  /** 26000 invalid_sql_statement_name, 42P05 duplicate_prepared_statement. */
  readonly sqlstate: "26000" | "42P05";
  readonly message: string;
}

export interface ParseAnswer {
  /** The name to put in the Parse sent to the server ("" for the unnamed statement). */
  readonly serverName: string;
  /** False: the server has it already; answer ParseComplete locally and send nothing. */
  readonly needsParse: boolean;
  /** Close('S') messages to send before, one per statement evicted from this server. */
  readonly evict: readonly Buffer[];
}

export interface UseAnswer {
  /** The name to put in the Bind or Describe sent to the server. */
  readonly serverName: string;
  /** Send first: Close('S') for evicted statements, then a Parse; their replies are skipped. */
  readonly inject: readonly Buffer[];
}

interface Entry {
  readonly serverName: string;
  readonly key: string;
  readonly query: string;
  readonly paramTypes: readonly number[];
  /** Client names plus server connections holding it; the entry goes when this reaches 0. */
  refs: number;
}

/**
 * What makes two Parses the same statement on the server. `scope` is the client's search_path:
 * PostgreSQL resolves names when it parses, so one text under two search paths is two statements
 * (schema-per-tenant clients must not share one).
 */
const keyOf = (query: string, paramTypes: readonly number[], scope: string): string =>
  `${scope.length}:${scope}|${paramTypes.join(",")}|${query}`;

/** A client's Close of a name, as `onClose` took it: `reopen` puts it back if PostgreSQL skipped the Close. */
export type ClosedName = object;

/** Server-side names: upper case, so they never meet an unquoted SQL PREPARE name, and ≤ 20 bytes. */
const serverNameOf = (n: number): string => `PGW_${n.toString(36)}`;

export class PreparedStatements {
  private readonly entries = new Map<string, Entry>();
  /** The same entries by server-side name, for an eviction PostgreSQL skipped. */
  private readonly byServerName = new Map<string, Entry>();
  private readonly clients = new Map<ClientId, Map<string, Entry>>();
  /** Per server connection: prepared statements, least recently used first. */
  private readonly servers = new Map<ServerId, Map<string, Entry>>();
  private next = 1;

  readonly perServerCapacity: number;

  constructor(perServerCapacity: number) {
    this.perServerCapacity = perServerCapacity;
    if (!Number.isInteger(perServerCapacity) || perServerCapacity < 1) {
      throw new RangeError("perServerCapacity must be a positive integer");
    }
  }

  /** A client's Parse, about to go to `server`. */
  onParse(
    client: ClientId,
    name: string,
    query: string,
    paramTypes: readonly number[],
    server: ServerId,
    scope = "",
  ): ParseAnswer | StatementError {
    if (name === "") return { serverName: "", needsParse: true, evict: [] };
    const names = this.clientNames(client);
    if (names.has(name)) {
      return { sqlstate: "42P05", message: `prepared statement "${name}" already exists` };
    }
    const entry = this.entry(query, paramTypes, scope);
    names.set(name, entry);
    entry.refs++;
    const lru = this.serverLru(server);
    if (lru.has(entry.serverName)) {
      this.touch(lru, entry);
      return { serverName: entry.serverName, needsParse: false, evict: [] };
    }
    return { serverName: entry.serverName, needsParse: true, evict: this.admit(lru, entry) };
  }

  /**
   * PostgreSQL failed or skipped a Parse that only checked a statement this server already holds:
   * the client's name never came to exist, and the server's statement stays.
   */
  onProbeFailed(client: ClientId, name: string): void {
    this.forgetClientName(client, name);
  }

  /** PostgreSQL skipped the Close that evicted `serverName` (an error came first): it holds it still. */
  onEvictSkipped(server: ServerId, serverName: string): void {
    const e = this.byServerName.get(serverName);
    const lru = this.servers.get(server);
    if (e === undefined || lru === undefined || lru.has(serverName)) return;
    // One over capacity until the next admission evicts again.
    lru.set(serverName, e);
    e.refs++;
  }

  /** The server answered the client's Parse with an error: the name never came to exist. */
  onParseFailed(client: ClientId, name: string, server: ServerId): void {
    const entry = this.clients.get(client)?.get(name);
    if (entry === undefined) return;
    const lru = this.servers.get(server);
    if (lru?.get(entry.serverName) === entry) {
      lru.delete(entry.serverName);
      this.release(entry);
    }
    this.forgetClientName(client, name);
  }

  /** An injected re-Parse failed on the server (the table went away): it does not hold the name. */
  onReparseFailed(server: ServerId, serverName: string): void {
    const lru = this.servers.get(server);
    const e = lru?.get(serverName);
    if (lru === undefined || e === undefined) return;
    lru.delete(serverName);
    this.release(e);
  }

  /** A Bind naming a statement, about to go to `server`. */
  onBind(client: ClientId, name: string, server: ServerId): UseAnswer | StatementError {
    return this.use(client, name, server);
  }

  /** A Describe('S'): after a server switch the statement must be re-prepared there too. */
  onDescribe(client: ClientId, name: string, server: ServerId): UseAnswer | StatementError {
    return this.use(client, name, server);
  }

  /**
   * A client's Close('S') (closing an unknown name is not an error in PostgreSQL either). Returns
   * false for the unnamed statement, which is the server's own; else what `reopen` needs.
   */
  onClose(client: ClientId, name: string): ClosedName | false {
    if (name === "") return false;
    const e = this.clients.get(client)?.get(name);
    this.forgetClientName(client, name);
    return e ?? {};
  }

  /** PostgreSQL skipped the client's Close (an error came first): the name is back. */
  reopen(client: ClientId, name: string, closed: ClosedName): void {
    const e = closed as Partial<Entry>;
    if (e.serverName === undefined) return;
    const entry = e as Entry;
    const names = this.clientNames(client);
    if (names.has(name)) return;
    names.set(name, entry);
    entry.refs++;
    if (!this.entries.has(entry.key)) this.entries.set(entry.key, entry);
    if (!this.byServerName.has(entry.serverName)) this.byServerName.set(entry.serverName, entry);
  }

  /** Whether the client has a statement of this name (prepared with the protocol). */
  holds(client: ClientId, name: string): boolean {
    return this.clients.get(client)?.has(name) === true;
  }

  /** DEALLOCATE ALL or DISCARD ALL from the client: only its own names go. */
  deallocateAll(client: ClientId): void {
    const names = this.clients.get(client);
    if (names === undefined) return;
    for (const name of [...names.keys()]) this.forgetClientName(client, name);
    this.clients.delete(client);
  }

  /** The client disconnected. */
  onClientClosed(client: ClientId): void {
    this.deallocateAll(client);
  }

  /**
   * The server dropped every prepared statement itself (DEALLOCATE ALL / DISCARD ALL ran on it,
   * or the connection closed): forget them without sending Close.
   */
  onServerCleared(server: ServerId): void {
    const lru = this.servers.get(server);
    if (lru === undefined) return;
    this.servers.delete(server);
    for (const e of lru.values()) this.release(e);
  }

  onServerClosed(server: ServerId): void {
    this.onServerCleared(server);
  }

  /** Server-side names prepared on `server`, least recently used first (tests, SHOW commands). */
  preparedOn(server: ServerId): readonly string[] {
    return [...(this.servers.get(server)?.keys() ?? [])];
  }

  get size(): { readonly statements: number; readonly clients: number; readonly servers: number } {
    return { statements: this.entries.size, clients: this.clients.size, servers: this.servers.size };
  }

  private use(client: ClientId, name: string, server: ServerId): UseAnswer | StatementError {
    if (name === "") return { serverName: "", inject: [] };
    const entry = this.clients.get(client)?.get(name);
    if (entry === undefined) {
      return { sqlstate: "26000", message: `prepared statement "${name}" does not exist` };
    }
    const lru = this.serverLru(server);
    if (lru.has(entry.serverName)) {
      this.touch(lru, entry);
      return { serverName: entry.serverName, inject: [] };
    }
    const evict = this.admit(lru, entry);
    const parse = encodeParse({ name: entry.serverName, query: entry.query, paramTypes: entry.paramTypes });
    return { serverName: entry.serverName, inject: [...evict, parse] };
  }

  /** Records `entry` as prepared on this server, evicting the least recently used past capacity. */
  private admit(lru: Map<string, Entry>, entry: Entry): Buffer[] {
    lru.set(entry.serverName, entry);
    entry.refs++;
    const closes: Buffer[] = [];
    for (const [serverName, old] of lru) {
      if (lru.size <= this.perServerCapacity) break;
      lru.delete(serverName);
      this.release(old);
      closes.push(encodeClose({ target: "S", name: serverName }));
    }
    return closes;
  }

  private touch(lru: Map<string, Entry>, entry: Entry): void {
    lru.delete(entry.serverName);
    lru.set(entry.serverName, entry);
  }

  private entry(query: string, paramTypes: readonly number[], scope: string): Entry {
    const key = keyOf(query, paramTypes, scope);
    const found = this.entries.get(key);
    if (found !== undefined) return found;
    const e: Entry = {
      serverName: serverNameOf(this.next++),
      key,
      query,
      paramTypes: [...paramTypes],
      refs: 0,
    };
    this.entries.set(key, e);
    this.byServerName.set(e.serverName, e);
    return e;
  }

  private release(e: Entry): void {
    e.refs--;
    if (e.refs > 0) return;
    // Only this entry's own mappings: a reopened name may have met a newer entry for its key.
    if (this.entries.get(e.key) === e) this.entries.delete(e.key);
    if (this.byServerName.get(e.serverName) === e) this.byServerName.delete(e.serverName);
  }

  private forgetClientName(client: ClientId, name: string): void {
    const names = this.clients.get(client);
    const e = names?.get(name);
    if (names === undefined || e === undefined) return;
    names.delete(name);
    this.release(e);
    if (names.size === 0) this.clients.delete(client);
  }

  private clientNames(client: ClientId): Map<string, Entry> {
    let m = this.clients.get(client);
    if (m === undefined) {
      m = new Map();
      this.clients.set(client, m);
    }
    return m;
  }

  private serverLru(server: ServerId): Map<string, Entry> {
    let m = this.servers.get(server);
    if (m === undefined) {
      m = new Map();
      this.servers.set(server, m);
    }
    return m;
  }
}
