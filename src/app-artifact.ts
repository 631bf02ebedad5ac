import { buildSync } from "esbuild";
import { projectFile, projectRoot } from "./project-files.js";

/** Debian 12's node is 18; a small young generation keeps each FastCGI worker's RSS down. */
export const APP_SHEBANG = "#!/usr/bin/node --max-semi-space-size=1";

let script: string | undefined;

/**
 * The index application as the single JS file the app servers run (`index.fcgi`). Built in
 * memory from src/app with a fixed working directory, so the same sources give the same bytes.
 */
export function indexAppScript(): string {
  if (script === undefined) {
    const result = buildSync({
      entryPoints: [projectFile("src/app/main.ts")],
      absWorkingDir: projectRoot(),
      bundle: true,
      platform: "node",
      target: "node18",
      format: "cjs",
      loader: { ".sql": "text" },
      external: ["pg-native"],
      banner: { js: APP_SHEBANG },
      write: false,
      logLevel: "warning",
    });
    const [output] = result.outputFiles;
    if (!output) throw new Error("esbuild produced no output for src/app/main.ts");
    script = output.text;
  }
  return script;
}
