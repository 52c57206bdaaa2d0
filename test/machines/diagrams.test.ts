import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { AnyStateNode } from "xstate";
import { diagramFiles } from "../../src/cli/diagramsCommand.ts";
import { connectionMachine } from "../../src/machines/connectionMachine.ts";

const DIR = join(import.meta.dirname, "../../docs/diagrams");
const files = diagramFiles();
const mermaid = files.find((f) => f.name === "connection.mmd")?.content ?? "";

/** Every state node below the root, parents included. */
const allNodes = (node: AnyStateNode = connectionMachine.root): AnyStateNode[] =>
  (Object.values(node.states) as AnyStateNode[]).flatMap((c) => [c, ...allNodes(c)]);
const idOf = (node: AnyStateNode) => node.path.join("_");

/** The labelled edges of the Mermaid text: `from --> to : A, B [guard]`. */
const edges = mermaid
  .split("\n")
  .map((l) => /^\s*(\S+) --> (\S+) : (.+)$/.exec(l))
  .filter((m) => m !== null)
  .map(([, from, to, labels]) => ({
    from: from!,
    to: to!,
    events: labels!.split(", ").map((s) => s.replace(/ \/ .*$/, "").replace(/ \[.*\]$/, "")),
  }));

/** "accepts without change" notes by state id. */
const accepted = new Map(
  [...mermaid.matchAll(/note right of (\S+)\n\s*accepts without change: (.+)\n\s*end note/g)].map(
    ([, id, list]) => [id!, list!.split(", ")] as const,
  ),
);

describe("committed diagrams", () => {
  it("there is something to compare", () => {
    expect(files.map((f) => f.name).sort()).toEqual([
      "connection.md",
      "connection.mmd",
      "server.md",
      "server.mmd",
    ]);
  });

  it.each(files.map((f) => [f.name, f.content] as const))(
    "docs/diagrams/%s matches the machine (regenerate with `npm run diagrams`)",
    (name, content) => {
      let committed: string;
      try {
        committed = readFileSync(join(DIR, name), "utf8");
      } catch {
        throw new Error(`docs/diagrams/${name} is missing: run \`npm run diagrams\` and commit it`);
      }
      expect(committed, `docs/diagrams/${name} is out of date: run \`npm run diagrams\``).toBe(content);
    },
  );

  it("the Markdown page embeds the Mermaid diagram", () => {
    const md = files.find((f) => f.name === "connection.md")?.content ?? "";
    expect(md).toContain(`\`\`\`mermaid\n${mermaid}\`\`\``);
  });
});

describe("the Mermaid diagram shows the whole machine", () => {
  const nodes = allNodes();

  it("declares every state of the machine, nested as in the machine", () => {
    expect(nodes.length).toBeGreaterThan(15);
    for (const node of nodes) {
      expect(mermaid, node.path.join(".")).toContain(`state "${node.key}" as ${idOf(node)}`);
    }
    // A compound state's initial child is marked inside it.
    for (const node of nodes) {
      const initial = node.initial?.target?.[0] as AnyStateNode | undefined;
      if (initial !== undefined) expect(mermaid, idOf(node)).toContain(`[*] --> ${idOf(initial)}`);
    }
    expect(mermaid).toContain("closed --> [*]");
  });

  it("draws every transition with its event, and notes every event accepted without change", () => {
    let checked = 0;
    for (const node of [connectionMachine.root, ...nodes]) {
      for (const [event, transitions] of node.transitions) {
        const label = event === "*" ? "any other message" : event;
        for (const t of transitions) {
          const targets = (t.target ?? []) as AnyStateNode[];
          if (targets.length === 0) {
            if (event === "*") continue;
            expect(accepted.get(idOf(node)), `${idOf(node)} accepts ${event}`).toContain(event);
            checked++;
            continue;
          }
          for (const target of targets) {
            const edge = edges.find((e) => e.from === idOf(node) && e.to === idOf(target));
            expect(edge?.events, `${idOf(node)} --${event}--> ${idOf(target)}`).toContain(label);
            checked++;
          }
        }
      }
    }
    expect(checked).toBeGreaterThan(100);
  });

  it("mentions every event type that appears in a transition", () => {
    const types = new Set([connectionMachine.root, ...nodes].flatMap((n) => [...n.transitions.keys()]));
    const shown = new Set([...edges.flatMap((e) => e.events), ...[...accepted.values()].flat()]);
    const missing = [...types].map((t) => (t === "*" ? "any other message" : t)).filter((t) => !shown.has(t));
    expect(missing).toEqual([]);
    expect(types.size).toBeGreaterThan(30);
  });
});
