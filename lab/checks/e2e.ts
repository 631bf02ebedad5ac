/**
 * End-to-end checks from the client namespace with real clients: sftp through HAProxy, the
 * app's own registration, pip through a floating IP over TLS, and the TLS policy nginx enforces.
 */

import { createHash } from "node:crypto";
import { copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { HSTS_MAX_AGE_SECONDS } from "../../src/render/nginx.js";
import { nodesWithRole, pgDialect } from "../../src/topology.js";
import { CLIENT_DIR, clientCommand, curlVia, httpsVia, type Lab, sftpArgv } from "../lib/lab.js";
import { startLoad } from "../lib/load.js";
import type { Report } from "../lib/report.js";
import { buildWheel, pipArgv, type Wheel } from "../lib/wheel.js";
import { runCdnOriginChecks } from "./cdn-origin.js";
import { runPublishChecks } from "./publish.js";

const expectMatch = (what: string, text: string, re: RegExp): void => {
  if (!re.test(text)) throw new Error(`${what}: expected ${re} in: ${text.slice(0, 600)}`);
};

async function clientRun(lab: Lab, argv: readonly string[], input = "", timeoutMs = 30_000) {
  return lab.client.execAsync(clientCommand(argv), { input, timeoutMs });
}

// ------------------------------------------------------------------ cluster state

async function replication(lab: Lab): Promise<string> {
  const [primary, standby] = nodesWithRole(lab.t, "db");
  if (!primary || !standby) throw new Error("need two db nodes");
  const mode = lab.t.postgres.synchronous ? "sync" : "async";
  const out = await lab.agent(primary.name, "db-replication");
  expectMatch(
    "pg_stat_replication on the primary",
    out,
    new RegExp(`^${standby.name} streaming ${mode}$`, "m"),
  );
  const status = await lab.agent(standby.name, "status");
  expectMatch(`${standby.name} status`, status, /postgres\tstandby/);
  return `${standby.name} streaming ${mode} from ${primary.name} (postgres ${lab.t.postgres.version}, ${pgDialect(lab.t.postgres.version)})`;
}

async function writerFromApps(lab: Lab): Promise<string> {
  const outs = await Promise.all(
    nodesWithRole(lab.t, "app").map((n) => lab.agent(n.name, "db-writer-check")),
  );
  return outs.map((o) => o.trim()).join("; ");
}

async function uploadBackends(lab: Lab): Promise<string> {
  const apps = nodesWithRole(lab.t, "app").map((n) => n.name);
  const outs = await Promise.all(
    nodesWithRole(lab.t, "balancer").map(async (lb) => {
      const out = await lab.agent(lb.name, "upload-backends");
      for (const app of apps)
        expectMatch(`${lb.name} HAProxy backend ${app}`, out, new RegExp(`^${app} UP$`, "m"));
      return `${lb.name}: ${apps.join(", ")} UP`;
    }),
  );
  return outs.join("; ");
}

// ------------------------------------------------------------------ upload -> register -> pip

async function sftpUpload(lab: Lab, wheel: Wheel): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const user = lab.t.upload.users[0]?.name ?? "";
  const r = await lab.client.execAsync(sftpArgv(lab.t, fip, 5), {
    input: `put ${CLIENT_DIR}/${wheel.filename} /upload/${wheel.filename}\nls -l /upload\n`,
    timeoutMs: 30_000,
  });
  if (r.status !== 0) throw new Error(`sftp exited ${r.status}: ${r.stderr}${r.stdout}`);
  expectMatch("sftp listing", r.stdout, new RegExp(wheel.filename.replace(/\./g, "\\.")));
  return `${wheel.filename} put as ${user} via ${fip}:${lab.t.upload.port} (HAProxy -> app sshd, host key verified)`;
}

/**
 * Nobody runs the registration: the register path unit on the app servers fires when the upload
 * directory fills, as on AWS. Resolves once the index lists the file, with how long that took.
 */
async function registeredByItsUnit(
  lab: Lab,
  wheel: Wheel,
  uploadedAt: number,
  report: Report,
  listed: { seconds?: number },
): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  for (;;) {
    const r = await httpsVia(lab, fip, `/simple/${wheel.name}/`);
    if (r.code === 200 && r.body.includes(wheel.filename)) break;
    if (Date.now() - uploadedAt > 60_000)
      throw new Error(`not listed 60 s after the upload: ${r.code} ${r.body.slice(0, 300)}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const seconds = Math.round((Date.now() - uploadedAt) / 100) / 10;
  listed.seconds = seconds;
  report.figure("upload -> pip", "upload to listed in /simple/ (register path unit)", seconds, "s");
  return `listed ${seconds} s after the upload, registered by pypi-index-register.path`;
}

async function pipDownload(lab: Lab, wheel: Wheel): Promise<string> {
  const dest = `${CLIENT_DIR}/pip`;
  const r = await clientRun(
    lab,
    pipArgv("download", {
      indexUrl: `https://${lab.t.domain}/simple/`,
      cert: `${CLIENT_DIR}/ca.pem`,
      into: dest,
      spec: `${wheel.name}==${wheel.version}`,
    }),
    "",
    90_000,
  );
  if (r.status !== 0) throw new Error(`pip exited ${r.status}: ${r.stderr}${r.stdout}`);
  const got = createHash("sha256")
    .update(readFileSync(join(lab.dirs.client, "pip", wheel.filename)))
    .digest("hex");
  if (got !== wheel.sha256) throw new Error(`downloaded sha256 ${got} != uploaded ${wheel.sha256}`);
  return `pip downloaded ${wheel.filename} from https://${lab.t.domain}/simple/ (-> ${lab.t.floatingIps[0]?.address}), sha256 matches`;
}

async function simplePageEverywhere(lab: Lab, wheel: Wheel): Promise<string> {
  const outs = await Promise.all(
    lab.t.floatingIps.map(async (f) => {
      const r = await httpsVia(lab, f.address, `/simple/${wheel.name}/`);
      if (r.code !== 200) throw new Error(`${f.address}: ${r.code} ${r.body.slice(0, 300)}`);
      expectMatch(
        `/simple/${wheel.name}/ via ${f.address}`,
        r.body,
        new RegExp(`${wheel.filename}#sha256=${wheel.sha256}`),
      );
      return f.address;
    }),
  );
  return `/simple/${wheel.name}/ lists the file with its sha256 via ${outs.join(", ")}`;
}

// ------------------------------------------------------------------ TLS policy

async function httpRedirect(lab: Lab): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const r = await clientRun(lab, [
    "curl",
    "-sS",
    "-o",
    "/dev/null",
    "--max-time",
    "5",
    "--resolve",
    `${lab.t.domain}:80:${fip}`,
    "-w",
    "%{http_code} %{redirect_url}",
    `http://${lab.t.domain}/simple/`,
  ]);
  expectMatch(
    "http://…/simple/",
    r.stdout,
    new RegExp(`^301 https://${lab.t.domain.replace(/\./g, "\\.")}/simple/$`),
  );
  return r.stdout;
}

async function hsts(lab: Lab): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const r = await clientRun(lab, [
    ...curlVia(lab, fip),
    "-D",
    "-",
    "-o",
    "/dev/null",
    `https://${lab.t.domain}/simple/`,
  ]);
  const header = r.stdout.split(/\r?\n/).find((l) => /^strict-transport-security:/i.test(l)) ?? "";
  expectMatch("HSTS header", header, new RegExp(`max-age=${HSTS_MAX_AGE_SECONDS}`));
  return header.trim();
}

/** openssl s_client pinned to one protocol; SECLEVEL=0 so any refusal is the server's, not ours. */
async function handshake(lab: Lab, fip: string, flag: string) {
  return clientRun(
    lab,
    [
      "timeout",
      "10",
      "openssl",
      "s_client",
      "-connect",
      `${fip}:443`,
      "-servername",
      lab.t.domain,
      "-CAfile",
      `${CLIENT_DIR}/ca.pem`,
      flag,
      "-cipher",
      "DEFAULT@SECLEVEL=0",
    ],
    "Q\n",
    15_000,
  );
}

async function tlsRefused(lab: Lab, flag: "-tls1" | "-tls1_1"): Promise<string> {
  const outs = await Promise.all(
    lab.t.floatingIps.map(async (f) => {
      const r = await handshake(lab, f.address, flag);
      if (r.status === 0) throw new Error(`${f.address} accepted ${flag}: ${r.stdout.slice(0, 300)}`);
      // The server's alert (protocol_version, 70), not a client-side refusal to offer the version.
      expectMatch(`${f.address} ${flag}`, r.stderr, /alert protocol version|alert number 70/);
      return f.address;
    }),
  );
  return `server alert protocol_version via ${outs.join(", ")}`;
}

async function tls12Accepted(lab: Lab): Promise<string> {
  const fip = lab.t.floatingIps[0]?.address ?? "";
  const r = await handshake(lab, fip, "-tls1_2");
  if (r.status !== 0) throw new Error(`TLS 1.2 handshake failed: ${r.stderr.slice(0, 400)}`);
  expectMatch("TLS 1.2", r.stdout, /Verify return code: 0 \(ok\)/);
  const cipher = /Cipher is (\S+)/.exec(r.stdout)?.[1] ?? "?";
  return `TLSv1.2 ${cipher}, chain verified against the lab CA`;
}

/** The drills' load generator, briefly through every floating IP: it must see no failure here. */
async function loadSmoke(lab: Lab, report: Report): Promise<string> {
  const handles = lab.t.floatingIps.map((f, i) => ({
    fip: f.address,
    h: startLoad(lab, { name: `smoke-${i}`, fip: f.address }),
  }));
  await new Promise((r) => setTimeout(r, 2_000));
  const stats = await Promise.all(handles.map(async ({ fip, h }) => ({ fip, s: await h.stop() })));
  for (const { fip, s } of stats) {
    if (s.requests === 0) throw new Error(`no request completed via ${fip}`);
    if (s.failed > 0) throw new Error(`${s.failed}/${s.requests} requests failed via ${fip}`);
    report.figure("load", `requests in 2 s via ${fip} (no failover)`, s.requests, "requests", "0 failed");
  }
  return stats.map(({ fip, s }) => `${fip}: ${s.requests} requests, 0 failed`).join("; ");
}

/** Every end-to-end check; each lands in the report whatever the others do. */
export async function runEndToEnd(lab: Lab, report: Report): Promise<void> {
  const cluster = "cluster";
  await report.check(cluster, "streaming replication", () => replication(lab));
  await report.check(cluster, "writer address reaches the primary from every app node", () =>
    writerFromApps(lab),
  );
  await report.check(cluster, "HAProxy upload backends UP on both balancers", () => uploadBackends(lab));

  const flow = "upload -> pip";
  const wheel = buildWheel(lab.dirs.work, "labprobe", `1.0.${Date.now() % 100000}`);
  copyFileSync(wheel.path, join(lab.dirs.client, wheel.filename));
  const uploaded = await report.check(flow, "sftp upload through HAProxy on a floating IP", () =>
    sftpUpload(lab, wheel),
  );
  const uploadedAt = Date.now();
  const listed: { seconds?: number } = {};
  const registered =
    uploaded &&
    (await report.check(flow, "registered by the app servers' register unit, no hand step", () =>
      registeredByItsUnit(lab, wheel, uploadedAt, report, listed),
    ));
  if (registered) {
    await report.check(flow, "pip download over TLS via the floating IP", () => pipDownload(lab, wheel));
    await report.check(flow, "simple page via every floating IP", () => simplePageEverywhere(lab, wheel));
    const page = await httpsVia(lab, lab.t.floatingIps[0]?.address ?? "", `/simple/${wheel.name}/`);
    await runCdnOriginChecks(lab, report, wheel, page.body, uploadedAt, listed.seconds);
  }
  await runPublishChecks(lab, report);

  const tls = "tls";
  await report.check(tls, "HTTP redirects to HTTPS", () => httpRedirect(lab));
  await report.check(tls, "HSTS header", () => hsts(lab));
  await report.check(tls, "TLS 1.0 refused by the server", () => tlsRefused(lab, "-tls1"));
  await report.check(tls, "TLS 1.1 refused by the server", () => tlsRefused(lab, "-tls1_1"));
  await report.check(tls, "TLS 1.2 accepted", () => tls12Accepted(lab));
  await report.check("load", "load generator through every floating IP", () => loadSmoke(lab, report));
}
