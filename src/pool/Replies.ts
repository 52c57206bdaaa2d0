import { clearArray } from "../clearArray.ts";
import { SqlState } from "../errors.ts";
import { sqlstateOf } from "../protocol/backend.ts";
import { Backend } from "../protocol/messageTypes.ts";

/**
 * The replies a server connection owes, one entry per request, in order — what pooled modes
 * need beyond OwedResponses' count of sync points. Each entry says whether its reply goes to the
 * client (forward), is swallowed (skip: a re-Parse or Close pgwarden injected), or is replaced by
 * pgwarden's own error (replace). pgwarden answers nothing without the server: every answer the
 * client gets is in the server's order, after what PostgreSQL skipped or failed.
 */

export const Reply = {
  parse: 1,
  bind: 2,
  close: 3,
  /** Describe of a statement: ParameterDescription, then RowDescription or NoData. */
  describeStatement: 4,
  describePortal: 5,
  /** CommandComplete, EmptyQueryResponse or PortalSuspended (after rows or COPY). */
  execute: 6,
  sync: 7,
  /** A simple query or FunctionCall: everything up to its ReadyForQuery. */
  query: 8,
} as const;
export type Reply = (typeof Reply)[keyof typeof Reply];

/**
 * `replace`: pgwarden refused the request and sent PostgreSQL a message that must fail in its
 * place, so that the server aborts the transaction and skips to Sync exactly as for an error of
 * its own; the server's ErrorResponse is swallowed and `local` (pgwarden's error) goes instead.
 */
export const Action = { forward: 0, skip: 1, replace: 2 } as const;
export type Action = (typeof Action)[keyof typeof Action];

export interface Entry {
  readonly reply: Reply;
  readonly action: Action;
  /** The error a replace entry sends instead of the server's. */
  readonly local?: Buffer;
  /**
   * Parse entries: the client's statement name (forward) or the server-side name (skip). Close
   * entries: the server-side name of a statement pgwarden evicted (skip).
   */
  readonly name?: string;
  /** A Parse that only checks, under a scratch name, what PostgreSQL answers for a statement the server holds. */
  readonly probe?: true;
  /** A client's Close('S') of this name, undone if PostgreSQL skips it. */
  readonly closes?: { readonly name: string; readonly token: unknown };
  /** A query that stands in for the client's `DEALLOCATE name` of a protocol-level statement. */
  readonly deallocates?: string;
  /** A statement name that later requests wait for until this reply is in (Link.pendingParses). */
  readonly pending?: string;
}

/** What a server message means for the head entry: the request it answers, or one of these. */
export const ASYNC = "async";
export const UNEXPECTED = "unexpected";
export type Match = Entry | typeof ASYNC | typeof UNEXPECTED;

/** Replies that end each kind of request, by server message type. */
const ends = (reply: Reply, type: number): boolean => {
  switch (reply) {
    case Reply.parse:
      return type === Backend.ParseComplete;
    case Reply.bind:
      return type === Backend.BindComplete;
    case Reply.close:
      return type === Backend.CloseComplete;
    case Reply.describeStatement:
    case Reply.describePortal:
      return type === Backend.RowDescription || type === Backend.NoData;
    case Reply.execute:
      return (
        type === Backend.CommandComplete ||
        type === Backend.EmptyQueryResponse ||
        type === Backend.PortalSuspended
      );
    case Reply.sync:
    case Reply.query:
      return type === Backend.ReadyForQuery;
  }
};

const EXTENDED_ONLY: ReadonlySet<number> = new Set([
  Backend.ParseComplete,
  Backend.BindComplete,
  Backend.CloseComplete,
  Backend.ParameterDescription,
  Backend.NoData,
  Backend.PortalSuspended,
]);

/** Messages that may come in the middle of a request's replies. */
const partOf = (reply: Reply, type: number): boolean => {
  // A simple query (or FunctionCall) may bring rows, COPY and notices, never extended-protocol replies.
  if (reply === Reply.query) return !EXTENDED_ONLY.has(type);
  if (reply === Reply.describeStatement) return type === Backend.ParameterDescription;
  if (reply === Reply.execute)
    return (
      type === Backend.CopyInResponse ||
      type === Backend.CopyOutResponse ||
      type === Backend.CopyBothResponse ||
      type === Backend.CopyDone ||
      type === Backend.RowDescription
    );
  return false;
};

export class Replies {
  /** Allocated on the first request: an idle client carries none. */
  private entries: Entry[] | undefined;
  private head = 0;

  get size(): number {
    return (this.entries?.length ?? 0) - this.head;
  }

  get empty(): boolean {
    return this.head === (this.entries?.length ?? 0);
  }

  push(entry: Entry): void {
    if (this.entries === undefined) this.entries = [entry];
    else this.entries.push(entry);
  }

  peek(): Entry | undefined {
    return this.entries?.[this.head];
  }

  private shift(): Entry | undefined {
    const entries = this.entries;
    const e = entries?.[this.head];
    if (e === undefined) return undefined;
    this.head++;
    if (this.head === entries!.length) {
      clearArray(entries!);
      this.head = 0;
    }
    return e;
  }

  /** The error a replace entry sends in place of `error`, the server's answer to its stand-in. */
  replacement(error: Buffer): Buffer | undefined {
    const e = this.peek();
    return e === undefined ? undefined : replacementOf(e, error);
  }

  /**
   * Matches a server message to the head request; ErrorResponse ends the head request and, as
   * PostgreSQL skips to the next Sync after an error, every request before that Sync too (with
   * the stand-ins pgwarden sent there: PostgreSQL skipped them too). Returns the request the
   * error ended, for prepared-statement bookkeeping.
   */
  match(type: number, skipped?: Entry[]): Match {
    if (
      type === Backend.ParameterStatus ||
      type === Backend.NoticeResponse ||
      type === Backend.NotificationResponse
    )
      return ASYNC;
    const head = this.peek();
    if (head === undefined) return UNEXPECTED;
    if (type === Backend.ErrorResponse) {
      // A query's error, or one at Sync (a failed implicit COMMIT): ReadyForQuery still follows.
      if (head.reply === Reply.query || head.reply === Reply.sync) return head;
      this.shift();
      // The requests PostgreSQL now ignores never happen: the caller undoes what they registered.
      for (let e = this.peek(); e !== undefined && e.reply !== Reply.sync; e = this.peek()) {
        this.shift();
        skipped?.push(e);
      }
      return head;
    }
    if (ends(head.reply, type)) {
      this.shift();
      return head;
    }
    return partOf(head.reply, type) ? head : UNEXPECTED;
  }

  clear(): void {
    this.entries = undefined;
    this.head = 0;
  }
}

/**
 * The error the client gets when PostgreSQL fails `entry`'s stand-in with `error`: pgwarden's own
 * — except in an aborted transaction, where PostgreSQL refuses every request with 25P02 before
 * looking at it, and so does the client's view of it.
 */
export const replacementOf = (entry: Entry, error: Buffer): Buffer | undefined =>
  entry.action !== Action.replace || sqlstateOf(error) === SqlState.inFailedSqlTransaction
    ? undefined
    : entry.local;
