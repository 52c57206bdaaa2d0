import * as Schema from "effect/Schema";
import { isPgwardenError, type PgwardenError, pgwardenError, SqlState } from "../errors.ts";
import { type CertMapper, CertMappingConfig, compileCertMapping } from "./certIdentity.ts";
import { type Cidr, cidrContains, formatIp, isCidrError, parseCidr, parseIp } from "./cidr.ts";
import { Name, nameIssue, withDefault } from "./schemaKit.ts";

/**
 * Access rules: an ordered list, first match wins, no match rejects, as in pg_hba.conf.
 *
 * Decisions are made in the first phase, before authentication, from what is known then: source
 * address, transport, the identity the client claims (startup user, or the identity its
 * certificate maps to) and database. The matching rule fixes the authentication method, which
 * authentication then enforces; a failed method ends the connection and no later rule is tried.
 * Nothing learnt during authentication can change the decision, so it is never re-evaluated.
 */

export const Transport = Schema.Literals(["plain", "tls", "mtls"]);
export type Transport = typeof Transport.Type;

export const RuleMethod = Schema.Literals(["scram-sha-256", "cert", "cert+scram", "trust"]);
export type RuleMethod = typeof RuleMethod.Type;

export const RuleAction = Schema.Literals(["allow", "reject"]);
export type RuleAction = typeof RuleAction.Type;

/** The name the implicit final rule goes by in decisions and log lines. */
export const IMPLICIT_REJECT = "(implicit reject)";

const cidrIssue = (text: string): string | undefined => {
  if (text === "all") return undefined;
  const c = parseCidr(text);
  return isCidrError(c) ? c.message : undefined;
};

const SourceText = Schema.String.check(Schema.makeFilter(cidrIssue));

const NonEmptyList = <S extends Schema.Constraint>(item: S) =>
  Schema.Array(item).check(
    Schema.makeFilter((a: ReadonlyArray<unknown>) =>
      a.length === 0 ? "must not be empty; leave the key out to match any" : undefined,
    ),
  );

// "all" is not a keyword for names: a reject rule naming database "all" would silently miss.
const NameOrGroup = Name.check(
  Schema.makeFilter((s: string) =>
    s === "all" ? '"all" is not a keyword here; leave the key out to match any' : undefined,
  ),
);

/** A configuration mistake at a path below the section; assignable to a schema filter issue. */
interface Issue {
  readonly path: ReadonlyArray<PropertyKey>;
  readonly issue: string;
}

const RuleFields = Schema.Struct({
  name: Name,
  /** CIDRs or `all`; left out, any source. */
  source: Schema.optionalKey(NonEmptyList(SourceText)),
  transport: Schema.optionalKey(NonEmptyList(Transport)),
  /** Identity names, or `@group`. */
  identities: Schema.optionalKey(NonEmptyList(NameOrGroup)),
  databases: Schema.optionalKey(NonEmptyList(NameOrGroup)),
  /** Authentication an allow rule requires; left out, the configured default method. */
  method: Schema.optionalKey(RuleMethod),
  action: RuleAction,
});
type RuleFields = typeof RuleFields.Type;

/** Rule-local consistency, reported at the offending field. */
const ruleIssues = (r: RuleFields): Issue[] => {
  const issues: Issue[] = [];
  if (r.action === "reject" && r.method !== undefined)
    issues.push({ path: ["method"], issue: "a reject rule has no authentication method; remove it" });
  const certMethod = r.method === "cert" || r.method === "cert+scram";
  if (certMethod && (r.transport === undefined || r.transport.some((t) => t !== "mtls")))
    issues.push({
      path: ["transport"],
      issue: `method ${r.method} needs a client certificate: use transport [mtls]`,
    });
  return issues;
};

export const AccessRule = RuleFields.check(Schema.makeFilter(ruleIssues));
export type AccessRule = typeof AccessRule.Type;

export const AccessRulesConfig = Schema.Array(AccessRule);
export type AccessRulesConfig = typeof AccessRulesConfig.Type;

const Member = Name.check(
  Schema.makeFilter((s: string) => (s.startsWith("@") ? "groups do not nest; list identities" : undefined)),
);
/** Group name → member identities; rules refer to a group as `@name`. */
export const GroupsConfig = Schema.Record(Schema.String, Schema.Array(Member)).check(
  // Checked here rather than in the key schema, where a bad key would read as "excess property".
  Schema.makeFilter((groups: Readonly<Record<string, unknown>>) =>
    Object.keys(groups).flatMap((g) => {
      const issue = g.startsWith("@") ? 'write the group name without "@"' : nameIssue(g);
      return issue === undefined ? [] : [{ path: [g], issue }];
    }),
  ),
);
export type GroupsConfig = typeof GroupsConfig.Type;

const matchesEverything = (r: RuleFields): boolean =>
  (r.source === undefined || r.source.includes("all")) &&
  (r.transport === undefined || new Set(r.transport).size === 3) &&
  r.identities === undefined &&
  r.databases === undefined;

/** Checks across rules and groups: unique names, declared groups, no rule hidden behind a catch-all. */
const accessIssues = (rules: readonly RuleFields[], groups: GroupsConfig): Issue[] => {
  const issues: Issue[] = [];
  const seen = new Map<string, number>();
  let catchAll: number | undefined;
  for (const [i, r] of rules.entries()) {
    const first = seen.get(r.name);
    if (first !== undefined)
      issues.push({
        path: ["rules", i, "name"],
        issue: `duplicate rule name "${r.name}" (also rules[${first}])`,
      });
    else seen.set(r.name, i);
    for (const [j, id] of (r.identities ?? []).entries()) {
      if (id.startsWith("@") && !Object.hasOwn(groups, id.slice(1)))
        issues.push({
          path: ["rules", i, "identities", j],
          issue: `group "${id.slice(1)}" is not defined in groups`,
        });
    }
    if (catchAll === undefined) {
      if (matchesEverything(r)) catchAll = i;
    } else if (catchAll === i - 1) {
      // Reported once, at the first rule it hides.
      issues.push({
        path: ["rules", i],
        issue: `rule "${r.name}" is unreachable: rules[${catchAll}] "${rules[catchAll]!.name}" matches every connection`,
      });
    }
  }
  return issues;
};

export const AccessConfig = Schema.Struct({
  /** Default: one rule allowing everyone with the configured authentication method. */
  rules: withDefault(AccessRulesConfig, [{ name: "default", action: "allow" }]),
  groups: withDefault(GroupsConfig, {}),
  certMapping: withDefault(CertMappingConfig, []),
}).check(Schema.makeFilter((c) => accessIssues(c.rules, c.groups)));
export type AccessConfig = typeof AccessConfig.Type;

/** What is known about a connection before authentication. */
export interface AccessRequest {
  /** The peer address as the socket reports it; undefined or unparsable matches only rules without a source. */
  readonly source: string | undefined;
  readonly transport: Transport;
  /** The claimed identity: the startup user, or the identity the client certificate maps to. */
  readonly identity: string;
  readonly database: string;
  /** Groups known from elsewhere (e.g. an identity store), added to those configured in `groups`. */
  readonly groups?: ReadonlySet<string>;
}

export type AccessDecision =
  | {
      readonly action: "allow";
      readonly rule: string;
      readonly index: number;
      readonly method: RuleMethod;
    }
  | {
      readonly action: "reject";
      readonly rule: string;
      /** -1 for the implicit reject after the last rule. */
      readonly index: number;
    };

export const isImplicitReject = (d: AccessDecision): boolean => d.index === -1;

export interface AccessPolicy {
  readonly decide: (request: AccessRequest) => AccessDecision;
  /** Groups `groups` puts the identity in. */
  readonly groupsOf: (identity: string) => ReadonlySet<string>;
}

const TRANSPORT_BIT: Record<Transport, number> = { plain: 1, tls: 2, mtls: 4 };

interface CompiledRule {
  /** Undefined: any source. */
  readonly cidrs: readonly Cidr[] | undefined;
  /** Bit set of TRANSPORT_BIT; 7 for any. */
  readonly transports: number;
  /** Undefined: any identity. */
  readonly names: ReadonlySet<string> | undefined;
  readonly groups: readonly string[];
  readonly databases: ReadonlySet<string> | undefined;
  readonly decision: AccessDecision;
}

const compileRule = (r: AccessRule, index: number, defaultMethod: RuleMethod): CompiledRule => {
  const ids = r.identities ?? [];
  const sources = r.source?.includes("all") ? undefined : r.source;
  return {
    cidrs: sources?.map((s) => parseCidr(s) as Cidr),
    transports: r.transport === undefined ? 7 : r.transport.reduce((bits, t) => bits | TRANSPORT_BIT[t], 0),
    names: r.identities === undefined ? undefined : new Set(ids.filter((i) => !i.startsWith("@"))),
    groups: ids.filter((i) => i.startsWith("@")).map((i) => i.slice(1)),
    databases: r.databases === undefined ? undefined : new Set(r.databases),
    // Frozen because every matching connection receives this same object.
    decision: Object.freeze(
      r.action === "allow"
        ? { action: "allow", rule: r.name, index, method: r.method ?? defaultMethod }
        : { action: "reject", rule: r.name, index },
    ),
  };
};

const IMPLICIT: AccessDecision = Object.freeze({ action: "reject", rule: IMPLICIT_REJECT, index: -1 });
const NO_GROUPS: ReadonlySet<string> = new Set();

export interface CompileOptions {
  /** Method of an allow rule that names none; the `auth.method` setting. */
  readonly defaultMethod?: RuleMethod;
}

const configError = (message: string): PgwardenError =>
  pgwardenError("PGW_CONFIG", SqlState.internalError, message);

const pathText = (path: ReadonlyArray<PropertyKey>): string =>
  path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join("");

/**
 * Compiles rules once, so a decision is a few set look-ups and word compares per rule. Takes a
 * decoded `AccessConfig`; re-checks cross-rule consistency so a hand-built config cannot skip it.
 */
export const compileAccessPolicy = (
  config: Pick<AccessConfig, "rules" | "groups">,
  options: CompileOptions = {},
): AccessPolicy | PgwardenError => {
  const issues = [
    ...config.rules.flatMap((r, i) => [
      ...(r.source ?? []).flatMap((s, j) => {
        const issue = cidrIssue(s);
        return issue === undefined ? [] : [{ path: ["rules", i, "source", j], issue }];
      }),
      ...ruleIssues(r).map((x) => ({ path: ["rules", i, ...x.path], issue: x.issue })),
    ]),
    ...accessIssues(config.rules, config.groups),
  ];
  if (issues.length > 0)
    return configError(issues.map((x) => `access.${pathText(x.path)}: ${x.issue}`).join("\n"));

  const rules = config.rules.map((r, i) => compileRule(r, i, options.defaultMethod ?? "scram-sha-256"));
  const membership = new Map<string, Set<string>>();
  for (const [group, members] of Object.entries(config.groups)) {
    for (const m of members) {
      const s = membership.get(m) ?? new Set<string>();
      s.add(group);
      membership.set(m, s);
    }
  }
  const groupsOf = (identity: string): ReadonlySet<string> => membership.get(identity) ?? NO_GROUPS;

  return {
    groupsOf,
    decide: (req) => {
      const ip = req.source === undefined ? undefined : parseIp(req.source);
      const bit = TRANSPORT_BIT[req.transport];
      const configured = groupsOf(req.identity);
      const extra = req.groups ?? NO_GROUPS;
      for (const r of rules) {
        if ((r.transports & bit) === 0) continue;
        if (r.databases !== undefined && !r.databases.has(req.database)) continue;
        if (
          r.names !== undefined &&
          !r.names.has(req.identity) &&
          !r.groups.some((g) => configured.has(g) || extra.has(g))
        )
          continue;
        if (r.cidrs !== undefined && (ip === undefined || !r.cidrs.some((c) => cidrContains(c, ip))))
          continue;
        return r.decision;
      }
      return IMPLICIT;
    },
  };
};

export interface CompiledAccess {
  readonly policy: AccessPolicy;
  readonly certs: CertMapper;
}

/** The whole `access` section compiled, as at start and on each SIGHUP; an error leaves the old one in force. */
export const compileAccess = (
  config: AccessConfig,
  options: CompileOptions = {},
): CompiledAccess | PgwardenError => {
  const policy = compileAccessPolicy(config, options);
  if (isPgwardenError(policy)) return policy;
  const certs = compileCertMapping(config.certMapping);
  return isPgwardenError(certs) ? certs : { policy, certs };
};

const shownSource = (source: string | undefined): string => {
  const ip = source === undefined ? undefined : parseIp(source);
  return ip === undefined ? JSON.stringify(source ?? "unknown") : formatIp(ip);
};

/**
 * One line for the log and the audit event. Client-supplied names are JSON-quoted so a crafted
 * user or database name cannot forge a second log line.
 */
export const describeDecision = (d: AccessDecision, req: AccessRequest): string => {
  const who = `identity ${JSON.stringify(req.identity)} database ${JSON.stringify(req.database)} from ${shownSource(req.source)} over ${req.transport}`;
  if (d.index === -1) return `access reject: no rule matched ${IMPLICIT_REJECT}: ${who}`;
  const by = `rules[${d.index}] ${JSON.stringify(d.rule)}`;
  return d.action === "allow"
    ? `access allow by ${by} with method ${d.method}: ${who}`
    : `access reject by ${by}: ${who}`;
};

/**
 * The error a rejected client is sent. Like PostgreSQL it does not say which rule: the rule name
 * is for the log, not for an unauthenticated peer probing the policy.
 */
export const accessDeniedError = (req: AccessRequest): PgwardenError =>
  pgwardenError(
    "PGW_ACCESS_DENIED",
    SqlState.invalidAuthorization,
    `no access rule allows connection for host ${shownSource(req.source)}, user ${JSON.stringify(req.identity)}, database ${JSON.stringify(req.database)}, ${req.transport === "plain" ? "no encryption" : req.transport === "tls" ? "TLS" : "TLS with client certificate"}`,
  );
