// `npm run build:app`: writes the app servers' index.fcgi to dist/ for local use.
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { indexAppScript } from "../app-artifact.js";
import { projectFile } from "../project-files.js";

mkdirSync(projectFile("dist"), { recursive: true });
writeFileSync(projectFile("dist/index-app.js"), indexAppScript());
chmodSync(projectFile("dist/index-app.js"), 0o755);
console.log("dist/index-app.js");
