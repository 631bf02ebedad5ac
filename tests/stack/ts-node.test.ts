import { spawnSync } from "node:child_process";
import { expect, test } from "vitest";

/**
 * `pulumi preview` runs src/index.ts through ts-node, registered the way the Pulumi nodejs
 * runtime does it. Our ".js" import specifiers resolve to ".ts" sources only with the project's
 * ts-node and its experimentalResolver (tsconfig.json); Pulumi's vendored ts-node 7 cannot.
 */
test("the Pulumi runtime's ts-node registration loads the program's modules", () => {
  const script = `
    const tsn = require(require.resolve("ts-node", { paths: [process.cwd()] }));
    tsn.register({
      compiler: require.resolve("typescript", { paths: [process.cwd()] }),
      project: "tsconfig.json",
      skipProject: false,
      compilerOptions: { target: "ES2020", module: "nodenext", moduleResolution: "nodenext", sourceMap: "true" },
    });
    for (const m of ["src/stack.ts", "src/config.ts", "src/bundle.ts"]) {
      const exported = Object.keys(require(require("node:path").resolve(m)));
      console.log(m, exported.length);
    }
    // Pulumi's run.js requires the entry and calls it when module.exports is a function.
    console.log("index", typeof require(require("node:path").resolve("src/index.ts")));`;
  const run = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 60_000 });
  expect(run.stderr).toBe("");
  expect(run.status).toBe(0);
  expect(run.stdout).toMatch(/^src\/stack\.ts [1-9]/m);
  expect(run.stdout).toMatch(/^src\/bundle\.ts [1-9]/m);
  expect(run.stdout).toMatch(/^index function$/m);
});
