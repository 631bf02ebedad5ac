/** Writes docs/config.md and the config block of Pulumi.yaml from the schema. */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configReference, pulumiYamlConfigBlock } from "../src/config-docs.js";
import { projectRoot } from "../src/project-files.js";

const root = projectRoot();
mkdirSync(join(root, "docs"), { recursive: true });
writeFileSync(join(root, "docs", "config.md"), configReference());
const project = readFileSync(join(root, "Pulumi.yaml"), "utf8");
const at = project.indexOf("\nconfig:\n");
if (at < 0) throw new Error("Pulumi.yaml has no top-level config: block");
writeFileSync(join(root, "Pulumi.yaml"), `${project.slice(0, at + 1)}${pulumiYamlConfigBlock()}`);
console.log("wrote docs/config.md and the config block of Pulumi.yaml");
