// Runs a TypeScript entry under plain Node (no ts-node here): transpiles .ts to CommonJS on
// require with the project's TypeScript, and resolves the ".js" specifiers of nodenext
// imports to their ".ts" sources.
const fs = require("node:fs");
const path = require("node:path");
const Module = require("node:module");
const ts = require("typescript");

const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, parent, ...rest) {
  if (request.startsWith(".") && request.endsWith(".js") && parent?.filename) {
    const candidate = path.resolve(path.dirname(parent.filename), request.replace(/\.js$/, ".ts"));
    if (fs.existsSync(candidate)) return candidate;
  }
  return resolveFilename.call(this, request, parent, ...rest);
};
require.extensions[".ts"] = (module, filename) => {
  const { outputText } = ts.transpileModule(fs.readFileSync(filename, "utf8"), {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    fileName: filename,
  });
  module._compile(outputText, filename);
};
require(path.resolve(process.argv[2]));
