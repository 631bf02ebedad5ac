/**
 * Resource count and build time of each stack under Pulumi mocks.
 * Usage: npm run bench  (writes bench/stack.json)
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildStack, type StackName } from "../lab/lib/stack-mocks.js";

async function main(): Promise<void> {
  const results: Record<string, { resources: number; customResources: number; ms: number }> = {};
  for (const stack of ["staging", "prod"] as StackName[]) {
    const start = process.hrtime.bigint();
    const built = await buildStack(stack);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    results[stack] = {
      resources: built.resources.length,
      customResources: built.resources.filter((r) => !r.type.startsWith("pypi:infra:")).length,
      ms: Math.round(ms),
    };
    console.log(`${stack}\t${built.resources.length} resources\t${Math.round(ms)} ms`);
  }
  const out = join(__dirname, "stack.json");
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`wrote ${out}`);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
