/**
 * `pypi-index admin …`: what operators do by hand (over SSM, as the app user): tokens,
 * project roles, yanking. Each command prints one line per result and exits non-zero with a
 * reason on bad input.
 */
import type pg from "pg";
import type { AppConfig } from "./config.js";
import { normalizeName } from "./names.js";
import { versionKey } from "./pep440.js";
import { publishProject, withProjectLock } from "./publish.js";
import { ACCOUNT_RE, createToken, ensureAccount, listTokens, revokeToken } from "./tokens.js";

export const ADMIN_USAGE = [
  "pypi-index admin token create ACCOUNT [--project NAME]... [--description TEXT]",
  "pypi-index admin token list [ACCOUNT]",
  "pypi-index admin token revoke TOKEN_ID",
  "pypi-index admin role add PROJECT ACCOUNT owner|maintainer",
  "pypi-index admin role remove PROJECT ACCOUNT",
  "pypi-index admin role list PROJECT",
  "pypi-index admin yank PROJECT VERSION [--reason TEXT]",
  "pypi-index admin unyank PROJECT VERSION",
].join("\n");

export class UsageError extends Error {}

/** `--flag value` pairs and positionals; a flag may repeat. */
function options(
  args: readonly string[],
  flags: readonly string[],
): { pos: string[]; opt: Map<string, string[]> } {
  const pos: string[] = [];
  const opt = new Map<string, string[]>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a.startsWith("--")) {
      const name = a.slice(2);
      if (!flags.includes(name))
        throw new UsageError(
          `unknown option ${a}; allowed: ${flags.map((f) => `--${f}`).join(", ") || "none"}`,
        );
      const v = args[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      opt.set(name, [...(opt.get(name) ?? []), v]);
    } else pos.push(a);
  }
  return { pos, opt };
}

function account(name: string | undefined): string {
  if (!name || !ACCOUNT_RE.test(name))
    throw new UsageError(`account ${JSON.stringify(name ?? "")}: expected ${ACCOUNT_RE}`);
  return name;
}

async function projectOf(client: pg.ClientBase, name: string | undefined): Promise<string> {
  if (!name) throw new UsageError("a project name is required");
  const project = normalizeName(name);
  const r = await client.query("SELECT 1 FROM projects WHERE name = $1", [project]);
  if (r.rowCount === 0) throw new UsageError(`no project ${project}`);
  return project;
}

/** Files of one release (PEP 440-equal versions), or a usage error naming the known versions. */
async function releaseFiles(
  client: pg.ClientBase,
  project: string,
  version: string | undefined,
): Promise<string> {
  const key = version ? versionKey(version) : null;
  if (!version || !key)
    throw new UsageError(`version ${JSON.stringify(version ?? "")}: not a PEP 440 version`);
  const r = await client.query(
    "SELECT 1 FROM files WHERE project = $1 AND COALESCE(version_key, version) = $2",
    [project, key],
  );
  if (r.rowCount === 0) throw new UsageError(`${project} has no release ${version}`);
  return key;
}

export async function admin(
  client: pg.ClientBase,
  cfg: AppConfig,
  args: readonly string[],
  out: (line: string) => void,
): Promise<void> {
  const [noun, verb, ...rest] = args;
  const cmd = `${noun ?? ""} ${verb ?? ""}`.trim();
  switch (cmd) {
    case "token create": {
      const { pos, opt } = options(rest, ["project", "description"]);
      const who = account(pos[0]);
      if (pos.length > 1) throw new UsageError(`unexpected arguments: ${pos.slice(1).join(" ")}`);
      const projects = opt.has("project")
        ? [...new Set((opt.get("project") ?? []).map(normalizeName))]
        : null;
      const t = await createToken(client, who, projects, opt.get("description")?.join(" ") ?? "");
      out(`${t.token}`);
      process.stderr.write(
        `token ${t.id} for ${who}${projects ? ` (projects: ${projects.join(", ")})` : ""}: shown once, store it now\n`,
      );
      return;
    }
    case "token list": {
      const rows = await listTokens(client, rest[0] === undefined ? undefined : account(rest[0]));
      for (const r of rows)
        out(
          [
            r.id,
            r.account,
            r.projects ? r.projects.join(",") : "*",
            r.revoked_at ? `revoked ${r.revoked_at.toISOString()}` : "live",
            r.last_used_at ? `used ${r.last_used_at.toISOString()}` : "never used",
            JSON.stringify(r.description),
          ].join("\t"),
        );
      return;
    }
    case "token revoke": {
      const id = rest[0] ?? "";
      if (!/^[0-9a-f]{16}$/.test(id))
        throw new UsageError(`token id ${JSON.stringify(id)}: expected 16 hex digits`);
      if (!(await revokeToken(client, id))) throw new UsageError(`no live token ${id}`);
      out(`revoked ${id}`);
      return;
    }
    case "role add": {
      const project = await projectOf(client, rest[0]);
      const who = account(rest[1]);
      const role = rest[2];
      if (role !== "owner" && role !== "maintainer")
        throw new UsageError(`role ${JSON.stringify(role ?? "")}: expected owner or maintainer`);
      await ensureAccount(client, who);
      await client.query(
        "INSERT INTO project_roles (project, account, role) VALUES ($1, $2, $3) ON CONFLICT (project, account) DO UPDATE SET role = EXCLUDED.role",
        [project, who, role],
      );
      out(`${project}\t${who}\t${role}`);
      return;
    }
    case "role remove": {
      const project = await projectOf(client, rest[0]);
      const who = account(rest[1]);
      const owners = await client.query<{ account: string }>(
        "SELECT account FROM project_roles WHERE project = $1 AND role = 'owner'",
        [project],
      );
      if (owners.rows.length === 1 && owners.rows[0]?.account === who)
        throw new UsageError(`${who} is the last owner of ${project}; add another owner first`);
      const r = await client.query("DELETE FROM project_roles WHERE project = $1 AND account = $2", [
        project,
        who,
      ]);
      if (r.rowCount === 0) throw new UsageError(`${who} has no role on ${project}`);
      out(`${project}\t${who}\tremoved`);
      return;
    }
    case "role list": {
      const project = await projectOf(client, rest[0]);
      const { rows } = await client.query<{ account: string; role: string }>(
        "SELECT account, role FROM project_roles WHERE project = $1 ORDER BY role DESC, account",
        [project],
      );
      for (const r of rows) out(`${project}\t${r.account}\t${r.role}`);
      return;
    }
    default:
      if (noun === "yank" || noun === "unyank") break;
      throw new UsageError(`unknown admin command ${JSON.stringify(cmd)}\n${ADMIN_USAGE}`);
  }
  // yank / unyank PROJECT VERSION: noun is the command, verb the project.
  const { pos, opt } = options([verb ?? "", ...rest], noun === "yank" ? ["reason"] : []);
  const project = await projectOf(client, pos[0]);
  await withProjectLock(client, project, async () => {
    const key = await releaseFiles(client, project, pos[1]);
    const reason = opt.get("reason")?.join(" ") ?? null;
    const r =
      noun === "yank"
        ? await client.query(
            "UPDATE files SET yanked_at = COALESCE(yanked_at, now()), yanked_reason = $3 WHERE project = $1 AND COALESCE(version_key, version) = $2",
            [project, key, reason],
          )
        : await client.query(
            "UPDATE files SET yanked_at = NULL, yanked_reason = NULL WHERE project = $1 AND COALESCE(version_key, version) = $2",
            [project, key],
          );
    await client.query("UPDATE projects SET pages_dirty = true WHERE name = $1", [project]);
    await publishProject(client, cfg, project, { root: false });
    out(`${noun === "yank" ? "yanked" : "unyanked"} ${project} ${pos[1]} (${r.rowCount} files)`);
  });
}
