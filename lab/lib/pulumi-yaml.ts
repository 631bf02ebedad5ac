/** The Pulumi project and stack files, read as Pulumi reads them (for the subset they use). */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { projectRoot } from "../../src/project-files.js";

/** The repository root (where Pulumi.yaml lives). */
export const ROOT = projectRoot();

/**
 * A reader for the YAML subset our Pulumi files use: block maps, block lists (of scalars or
 * maps), plain/double-quoted scalars, whole-line comments. Anything else throws.
 */
export function parseYamlSubset(text: string): unknown {
  const lines = text
    .split("\n")
    .map((raw, i) => ({ raw, no: i + 1 }))
    .filter(({ raw }) => raw.trim() !== "" && !raw.trimStart().startsWith("#"))
    .map(({ raw, no }) => ({ indent: raw.length - raw.trimStart().length, text: raw.trim(), no }));
  let pos = 0;

  const scalar = (s: string, no: number): unknown => {
    if (s.startsWith('"')) {
      if (!s.endsWith('"')) throw new Error(`yaml line ${no}: unterminated string`);
      return JSON.parse(s);
    }
    if (s.startsWith("'") || s.startsWith("{") || s.startsWith("[") || s.startsWith("&") || s.startsWith("*"))
      throw new Error(`yaml line ${no}: unsupported syntax ${s}`);
    if (s === "true") return true;
    if (s === "false") return false;
    if (s === "null" || s === "~") return null;
    if (/^-?[0-9]+(\.[0-9]+)?$/.test(s)) return Number(s);
    return s;
  };

  const block = (indent: number): unknown => {
    const first = lines[pos];
    if (!first || first.indent < indent) return null;
    if (first.text.startsWith("- ") || first.text === "-") {
      const list: unknown[] = [];
      for (
        let line = lines[pos];
        line && line.indent === first.indent && line.text.startsWith("-");
        line = lines[pos]
      ) {
        const rest = line.text.slice(1).trimStart();
        if (rest === "") {
          pos++;
          list.push(block(line.indent + 1));
        } else if (/^[A-Za-z0-9_.:-]+:( |$)/.test(rest)) {
          // A map item: re-read its first key at the item's content indent.
          const contentIndent = line.indent + (line.text.length - rest.length);
          lines[pos] = { indent: contentIndent, text: rest, no: line.no };
          list.push(block(contentIndent));
        } else {
          pos++;
          list.push(scalar(rest, line.no));
        }
      }
      return list;
    }
    const map: Record<string, unknown> = {};
    for (
      let line = lines[pos];
      line && line.indent === first.indent && !line.text.startsWith("- ");
      line = lines[pos]
    ) {
      const m = /^([A-Za-z0-9_.:-]+?):( (.*))?$/.exec(line.text);
      const key = m?.[1];
      if (key === undefined) throw new Error(`yaml line ${line.no}: expected "key: value", got ${line.text}`);
      pos++;
      const value = m?.[3]?.trim();
      map[key] = value === undefined || value === "" ? block(line.indent + 1) : scalar(value, line.no);
    }
    const next = lines[pos];
    if (next && next.indent > first.indent) throw new Error(`yaml line ${next.no}: unexpected indentation`);
    return map;
  };
  const doc = block(0);
  if (pos !== lines.length) throw new Error(`yaml line ${lines[pos]?.no}: unexpected content`);
  return doc;
}

export function readYaml(path: string): Record<string, unknown> {
  return parseYamlSubset(readFileSync(path, "utf8")) as Record<string, unknown>;
}

/** The `config:` map of Pulumi.<stack>.yaml. */
export function stackConfigMap(stack: string): Record<string, unknown> {
  const doc = readYaml(join(ROOT, `Pulumi.${stack}.yaml`));
  return (doc.config ?? {}) as Record<string, unknown>;
}

/** A stack's config as the Pulumi engine hands it to the program: strings, structured values as JSON. */
export function engineConfig(stack: string, extra: Record<string, string> = {}): Record<string, string> {
  const yaml = stackConfigMap(stack);
  return {
    ...Object.fromEntries(
      Object.entries(yaml).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]),
    ),
    ...extra,
  };
}
