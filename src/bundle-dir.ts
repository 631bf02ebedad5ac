import type { NodeBundle } from "./bundle-types.js";

/**
 * The on-disk form of a bundle, which the agent reads with POSIX tools: `manifest` and
 * `secrets` are tab-separated with `-` for empty, file contents sit under `files/<path>`.
 * The stack uploads these entries to S3 and the lab writes them to a directory.
 */
export function bundleDirEntries(bundle: NodeBundle): Map<string, string> {
  const cell = (value: string | undefined): string => {
    if (value === undefined || value === "") return "-";
    if (/[\t\n]/.test(value))
      throw new Error(`bundle ${bundle.node}: ${JSON.stringify(value)} contains a tab or newline`);
    return value;
  };
  const list = (values: readonly string[]): string => (values.length ? values.join(",") : "-");
  const entries = new Map<string, string>();
  const manifest = [
    ...bundle.files.map((f) =>
      [
        f.symlinkTo === undefined ? "file" : "symlink",
        f.path,
        f.mode,
        f.owner,
        f.group,
        cell(f.validator),
        list(f.reloads),
        cell(f.symlinkTo),
      ].join("\t"),
    ),
    ...bundle.absent.map((path) => ["absent", path, "-", "-", "-", "-", "-", "-"].join("\t")),
  ];
  entries.set("manifest", `${manifest.join("\n")}\n`);
  const secrets = bundle.secrets.map((s) =>
    [s.parameter, s.path, s.mode, s.owner, s.group, s.format, list(s.reloads), cell(s.pgpassEntry)].join(
      "\t",
    ),
  );
  entries.set("secrets", secrets.length ? `${secrets.join("\n")}\n` : "");
  entries.set("packages", `${bundle.packages.join("\n")}\n`);
  entries.set("services", bundle.services.length ? `${bundle.services.join("\n")}\n` : "");
  entries.set("stopped", bundle.stopped.length ? `${bundle.stopped.join("\n")}\n` : "");
  for (const file of bundle.files) {
    if (file.symlinkTo === undefined) entries.set(`files${file.path}`, file.content);
  }
  return entries;
}
