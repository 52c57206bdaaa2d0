import type { AnyStateMachine, AnyStateNode } from "xstate";

/**
 * Renders a machine as a Mermaid state diagram, straight from its definition, so the drawing in
 * the System Security Plan is the design that runs. Edges that share source and target are
 * merged into one labelled with every event; accepted-but-unchanged events are listed in a note.
 */

const nodeId = (node: AnyStateNode): string => node.path.join("_") || "root";

/** An action as the diagram names it: its type, and its parameter values when it has any. */
const actionName = (a: unknown): string => {
  if (typeof a === "string") return a;
  const { type, params } = a as { type: string; params?: Record<string, unknown> };
  const values = params === undefined ? [] : Object.values(params).map(String);
  return values.length === 0 ? type : `${type}(${values.join(", ")})`;
};

const actionList = (actions: unknown): string[] => (Array.isArray(actions) ? actions.map(actionName) : []);

/** `Event [guard] / action + action`: what happens on the edge, in the order the runtime does it. */
const eventLabel = (event: string, guard: unknown, actions: unknown): string => {
  const name = event === "*" ? "any other message" : event;
  const g = typeof guard === "string" ? guard : (guard as { type?: string } | undefined)?.type;
  const label = g === undefined ? name : `${name} [${g}]`;
  const acts = actionList(actions);
  return acts.length === 0 ? label : `${label} / ${acts.join(" + ")}`;
};

interface Edge {
  from: string;
  to: string;
  labels: string[];
}

const collect = (node: AnyStateNode, edges: Map<string, Edge>, accepted: Map<string, string[]>): void => {
  for (const [event, transitions] of node.transitions) {
    for (const t of transitions) {
      const targets = t.target as AnyStateNode[] | undefined;
      if (targets === undefined || targets.length === 0) {
        if (event !== "*") {
          const list = accepted.get(nodeId(node)) ?? [];
          if (!list.includes(event)) list.push(event);
          accepted.set(nodeId(node), list);
        }
        continue;
      }
      for (const target of targets) {
        const key = `${nodeId(node)}->${nodeId(target)}`;
        const edge = edges.get(key) ?? { from: nodeId(node), to: nodeId(target), labels: [] };
        const label = eventLabel(event, t.guard, t.actions);
        if (!edge.labels.includes(label)) edge.labels.push(label);
        edges.set(key, edge);
      }
    }
  }
  for (const child of Object.values(node.states) as AnyStateNode[]) collect(child, edges, accepted);
};

const declare = (
  node: AnyStateNode,
  indent: string,
  out: string[],
  accepted: Map<string, string[]>,
): void => {
  const id = nodeId(node);
  const children = Object.values(node.states) as AnyStateNode[];
  if (children.length === 0) {
    out.push(`${indent}state "${node.key}" as ${id}`);
  } else {
    out.push(`${indent}state "${node.key}" as ${id} {`);
    const initial = node.initial?.target?.[0] as AnyStateNode | undefined;
    if (initial !== undefined) out.push(`${indent}  [*] --> ${nodeId(initial)}`);
    for (const c of children) declare(c, `${indent}  `, out, accepted);
    out.push(`${indent}}`);
  }
  if (node.type === "final") out.push(`${indent}${id} --> [*]`);
  if (node.description !== undefined) out.push(`${indent}${id} : ${node.description.replace(/[:;]/g, ",")}`);
  const entry = actionList(node.entry);
  if (entry.length > 0) out.push(`${indent}${id} : entry / ${entry.join(", ").replace(/[:;]/g, ",")}`);
};

export const toMermaid = (machine: AnyStateMachine): string => {
  const root = machine.root;
  const edges = new Map<string, Edge>();
  const accepted = new Map<string, string[]>();
  collect(root, edges, accepted);
  const out = ["stateDiagram-v2"];
  const initial = root.initial?.target?.[0] as AnyStateNode | undefined;
  const rootEntry = actionList(root.entry);
  if (initial !== undefined)
    out.push(`  [*] --> ${nodeId(initial)}${rootEntry.length > 0 ? ` : / ${rootEntry.join(", ")}` : ""}`);
  for (const child of Object.values(root.states) as AnyStateNode[]) declare(child, "  ", out, accepted);
  for (const e of edges.values()) out.push(`  ${e.from} --> ${e.to} : ${e.labels.join(", ")}`);
  for (const [id, events] of accepted)
    out.push(`  note right of ${id}\n    accepts without change: ${events.join(", ")}\n  end note`);
  return `${out.join("\n")}\n`;
};

/** A Markdown page that GitHub and most viewers render as the drawing. */
export const toMarkdown = (title: string, mermaid: string, intro: string): string =>
  `# ${title}\n\n${intro}\n\n\`\`\`mermaid\n${mermaid}\`\`\`\n`;
