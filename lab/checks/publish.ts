/**
 * Publishing as Python users do it, from the client node through the first floating IP over
 * verified TLS: twine with an API token, pip installing what it published, and the refusals
 * (another account's upload, hostile archives) as twine prints them. Tokens are made the way
 * an operator makes them on AWS: the app's admin command on an app server (an SSM command).
 */
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { paths } from "../../src/layout.js";
import { nodesWithRole } from "../../src/topology.js";
import { CLIENT_DIR, clientCommand, type Lab } from "../lib/lab.js";
import type { Report } from "../lib/report.js";
import { buildWheel, type HostileKind, pipArgv, writeHostileWheel } from "../lib/wheel.js";

/** The admin command as an operator runs it over SSM: as the app user, env from the node's file. */
export async function adminOn(lab: Lab, args: string): Promise<string> {
  const app = nodesWithRole(lab.t, "app")[0]?.name ?? "";
  const r = await lab.exec(app, `runuser -u www-data -- ${paths.appRoot}/index.fcgi admin ${args}`, {
    timeoutMs: 30_000,
  });
  if (r.status !== 0) throw new Error(`admin ${args} on ${app}: exit ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}

export async function twine(lab: Lab, token: string, file: string): Promise<{ status: number; out: string }> {
  const r = await lab.client.execAsync(
    clientCommand([
      "twine",
      "upload",
      "--non-interactive",
      "--disable-progress-bar",
      "--repository-url",
      `https://${lab.t.domain}/legacy/`,
      "--cert",
      `${CLIENT_DIR}/ca.pem`,
      "-u",
      "__token__",
      "-p",
      token,
      `${CLIENT_DIR}/${file}`,
    ]),
    { timeoutMs: 90_000 },
  );
  // twine wraps the server's reason over lines; one space per gap keeps the checks simple.
  return { status: r.status, out: `${r.stdout}${r.stderr}`.replace(/\s+/g, " ") };
}

export async function runPublishChecks(lab: Lab, report: Report): Promise<void> {
  const group = "publish (twine over HTTPS)";
  const owner = lab.t.upload.users[0]?.name ?? "";
  const version = `2.0.${Date.now() % 100000}`;
  const wheel = buildWheel(lab.dirs.work, "labpub", version);
  copyFileSync(wheel.path, join(lab.dirs.client, wheel.filename));
  let ownerToken = "";
  let otherToken = "";

  const tokens = await report.check(
    group,
    "API tokens made by the admin command on an app server",
    async () => {
      ownerToken = await adminOn(lab, `token create ${owner} --description lab`);
      otherToken = await adminOn(lab, "token create intruder");
      const listed = await adminOn(lab, `token list ${owner}`);
      if (listed.includes(ownerToken)) throw new Error("token list shows a secret");
      return `tokens for ${owner} and intruder; list shows ids only`;
    },
  );
  if (!tokens) return;

  const published = await report.check(group, "twine upload with a token", async () => {
    const r = await twine(lab, ownerToken, wheel.filename);
    if (r.status !== 0) throw new Error(`twine exited ${r.status}: ${r.out.slice(-800)}`);
    return `${wheel.filename} published by ${owner} via https://${lab.t.domain}/legacy/`;
  });

  if (published)
    await report.check(group, "pip install of what twine published", async () => {
      const r = await lab.client.execAsync(
        clientCommand(
          pipArgv("install", {
            indexUrl: `https://${lab.t.domain}/simple/`,
            cert: `${CLIENT_DIR}/ca.pem`,
            into: `${CLIENT_DIR}/pip-target`,
            spec: `labpub==${version}`,
          }),
        ),
        { timeoutMs: 120_000 },
      );
      if (r.status !== 0) throw new Error(`pip exited ${r.status}: ${r.stderr}${r.stdout}`);
      const imported = await lab.client.execAsync(
        clientCommand([
          "/usr/bin/python3",
          "-c",
          `import sys; sys.path.insert(0, "${CLIENT_DIR}/pip-target"); import labpub; print(labpub.__version__)`,
        ]),
      );
      if (imported.stdout.trim() !== version)
        throw new Error(`imported ${imported.stdout}${imported.stderr}`);
      return `pip installed labpub ${version}; import gives ${imported.stdout.trim()}`;
    });

  if (published)
    await report.check(group, "another account's upload to that project is refused", async () => {
      const respelled = buildWheel(lab.dirs.work, "LabPub", `${version}.1`);
      copyFileSync(respelled.path, join(lab.dirs.client, respelled.filename));
      const r = await twine(lab, otherToken, respelled.filename);
      if (r.status === 0 || !/403 .*not an owner or maintainer of the project labpub/.test(r.out))
        throw new Error(`expected 403 not an owner, got exit ${r.status}: ${r.out.slice(-800)}`);
      return `intruder's ${respelled.filename}: ${/403 [^\n]*/.exec(r.out)?.[0]}`;
    });

  const hostile: readonly [HostileKind, string, RegExp][] = [
    ["bomb", "labbomb", /400 .*(zip bomb|inflate)/i],
    ["mismatch", "mismatch3", /400 .*METADATA says "requests 99\.0"/],
    ["slip", "labslip", /400 .*\.\.\/\.\.\/\.\.\/\.\.\/tmp\/pwned\.py/],
  ];
  for (const [kind, name, expected] of hostile)
    await report.check(group, `a ${kind} wheel is refused with its reason`, async () => {
      const filename = `${name}-2.0-py3-none-any.whl`;
      writeHostileWheel(join(lab.dirs.client, filename), kind, name, "2.0");
      const r = await twine(lab, ownerToken, filename);
      if (r.status === 0 || !expected.test(r.out))
        throw new Error(`expected ${expected}, got exit ${r.status}: ${r.out.slice(-800)}`);
      return /4[0-9]{2} [^\n]*/.exec(r.out)?.[0] ?? "";
    });
}
