/**
 * Drills for the failures only the health model sees: nothing crashes, nothing fails over, yet
 * each ends in an outage if nobody acts. A database volume fills up, a standby stops streaming,
 * a rollout brings an expired certificate, a standby stops replaying what it receives. Each waits for its alarm, then runs the runbook the
 * alarm names; the lab stands in only for the cloud calls the runbook's operator steps make.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROLLOUT_COMMAND } from "../../src/bring-up.js";
import { alarmName } from "../../src/health.js";
import { PG_DATA_MOUNT } from "../../src/layout.js";
import { APPLY_REFUSED_STATUS } from "../../src/render/cloud-init.js";
import { OPERATOR, type RunbookStep } from "../../src/runbooks/runbooks.js";
import type { Lab } from "../lib/lab.js";
import { DB_VOLUME_BYTES } from "../lib/lab.js";
import { describeRun, executeRunbook, runbookById } from "../lib/runbook.js";
import { awaitAlarm, drill, expectAlarm, markFault, seconds } from "./common.js";
import { primaryOf, superSql } from "./db-common.js";

/** How full the drill makes the database volume: past the alarm's threshold, short of full. */
const FILL_PERCENT = 94;
const BALLAST = `${PG_DATA_MOUNT}/drill-ballast`;
const CUT_TABLE = "pypidrill";

async function sh(lab: Lab, node: string, script: string, timeoutMs = 60_000): Promise<string> {
  const r = await lab.exec(node, script, { timeoutMs });
  if (r.status !== 0) throw new Error(`${node}: ${script}: exit ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout.trim();
}

/** Bytes in use and in total of the filesystem at `path` on a node. */
async function usage(lab: Lab, node: string, path: string): Promise<{ used: number; size: number }> {
  const [size, used] = (await sh(lab, node, `df -B1 --output=size,used ${path} | tail -n 1`))
    .split(/\s+/)
    .map(Number);
  if (!size || used === undefined) throw new Error(`${node}: no df figures for ${path}`);
  return { used, size };
}

const percent = (u: { used: number; size: number }): number => Math.round((u.used / u.size) * 1000) / 10;

export const dbVolumeFull = drill(
  "16",
  "the primary's data volume fills up; its runbook grows the volume online",
  300_000,
  async (lab, report, section) => {
    const { primary } = await primaryOf(lab);
    const node = lab.node(primary);
    // The ballast must land on the node's data volume, never on the lab host's disk.
    const source = await sh(lab, primary, `findmnt -n -o SOURCE --target ${PG_DATA_MOUNT}`);
    const device = node.volumeDevice;
    if (!device || source !== device)
      throw new Error(
        `${primary}: ${PG_DATA_MOUNT} is on ${source}, not on its data volume ${device ?? "(none)"}`,
      );
    const before = await usage(lab, primary, PG_DATA_MOUNT);
    if (before.size > DB_VOLUME_BYTES * 1.05)
      throw new Error(`${primary}: ${PG_DATA_MOUNT} is ${before.size} bytes, larger than the lab's volume`);
    const ballast = Math.ceil((FILL_PERCENT / 100) * before.size - before.used);
    const alarm = alarmName(lab.t, primary, "disk-data");
    expectAlarm(lab, alarm, `disk-full-${primary}`);
    markFault(lab);
    try {
      // What fills a database volume: WAL a failing archive keeps, a bloated table. The drill
      // takes the space at once, as one file of the postgres user.
      await sh(lab, primary, `fallocate -l ${ballast} ${BALLAST} && chown postgres: ${BALLAST}`);
      const full = await usage(lab, primary, PG_DATA_MOUNT);
      const runbook = await awaitAlarm(lab, alarm);
      await report.check(
        section,
        `runbook ${runbook}: what fills the volume shown, then the alarm clears`,
        async () => {
          const rb = runbookById(lab, runbook);
          const growAt = rb.steps.findIndex((step) => step.command.includes("volume-grow"));
          if (growAt < 0) throw new Error(`runbook ${rb.id} has no volume-grow step`);
          const onNode = (step: RunbookStep) => step.host !== OPERATOR;
          // Up to the grow: the report that names the full filesystem and what fills it.
          const before = await executeRunbook(rb, (h) => lab.node(h), {
            include: (step) => onNode(step) && rb.steps.indexOf(step) < growAt,
          });
          if (before.failure) throw new Error(before.failure);
          const shown = before.executed[0]?.stdout ?? "";
          if (!new RegExp(`^disk\\t${PG_DATA_MOUNT}\\t(9\\d|100)% used`, "m").test(shown))
            throw new Error(`disk-report does not show ${PG_DATA_MOUNT} full: ${shown}`);
          if (!shown.includes(BALLAST)) throw new Error(`disk-report does not name ${BALLAST}: ${shown}`);
          // The grow needs what the lab machine lacks (see the runbook's labLimitation): the drill
          // frees the space instead, and the runbook's last step must see the alarm's cause gone.
          await sh(lab, primary, `rm -f ${BALLAST}`);
          const after = await executeRunbook(rb, (h) => lab.node(h), {
            include: (step) => onNode(step) && rb.steps.indexOf(step) > growAt,
          });
          if (after.failure) throw new Error(after.failure);
          const freed = await usage(lab, primary, PG_DATA_MOUNT);
          report.figure(
            section,
            "data volume use: filled, then freed",
            percent(freed),
            "%",
            `${percent(full)} % full`,
          );
          return `${primary}: ${percent(full)} % used; ${describeRun(before).join("; ")}; grow not run (${rb.labLimitation}); ${describeRun(after).join("; ")}`;
        },
      );
    } finally {
      await lab.exec(primary, `rm -f ${BALLAST}`);
    }
  },
);

export const standbyStopsStreaming = drill(
  "17",
  "the standby is cut off from its primary and stops streaming",
  300_000,
  async (lab, report, section) => {
    const { primary, standby } = await primaryOf(lab);
    const primaryIp = lab.t.nodes.find((n) => n.name === primary)?.privateIp;
    if (!primaryIp) throw new Error(`no address for ${primary}`);
    const alarm = alarmName(
      lab.t,
      primary,
      lab.t.postgres.synchronous ? "sync-standby" : "standby-streaming",
    );
    expectAlarm(lab, alarm, `db-standby-lost-${standby}`);
    // The cut: a network change (a security group rule, on AWS) resets the standby's
    // connections to the primary's Postgres port; its WAL receiver then cannot reconnect.
    const cut = [
      `nft add table inet ${CUT_TABLE}`,
      `nft add chain inet ${CUT_TABLE} out '{ type filter hook output priority 0 ; }'`,
      `nft add rule inet ${CUT_TABLE} out ip daddr ${primaryIp} tcp dport ${lab.t.postgres.port} reject with tcp reset`,
    ].join(" && ");
    markFault(lab);
    await sh(lab, standby, cut);
    await lab.exec(standby, "pkill -f 'postgres: .*walreceiver' || true");
    try {
      const runbook = await awaitAlarm(lab, alarm);
      await report.check(
        section,
        `runbook ${runbook} re-attaches ${standby} once the cut is mended`,
        async () => {
          const rb = runbookById(lab, runbook);
          // Its first steps show the cause (the standby cannot reach the primary); the cause is
          // mended (the rule removed), then the rest of the runbook runs.
          const diagnosis = await executeRunbook(rb, (h) => lab.node(h), {
            include: (s) => s === rb.steps[0],
          });
          const firstFailed = diagnosis.failure !== undefined;
          await sh(lab, standby, `nft delete table inet ${CUT_TABLE}`);
          const run = await executeRunbook(rb, (h) => lab.node(h), { stepTimeoutMs: 300_000 });
          if (run.failure) throw new Error(run.failure);
          if (!firstFailed) throw new Error(`"${rb.steps[0]?.title}" passed while the standby was cut off`);
          return `while cut off, "${rb.steps[0]?.title}" failed as it should; mended, then: ${describeRun(run).join("; ")}`;
        },
      );
    } finally {
      await lab.exec(standby, `nft delete table inet ${CUT_TABLE} 2>/dev/null || true`);
    }
  },
);

/** A certificate for `domain` on `key` whose validity ended in 2025 (openssl ca sets the dates). */
function expiredCertificate(domain: string, keyPem: string): string {
  const dir = mkdtempSync(join(tmpdir(), "pypi-expired-"));
  try {
    const file = (name: string, text: string) => writeFileSync(join(dir, name), text);
    file("key.pem", keyPem);
    file("index.txt", "");
    file("serial", "01\n");
    file(
      "ca.cnf",
      "[ca]\ndefault_ca = lab\n[lab]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
    );
    const openssl = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
    openssl(["req", "-new", "-key", "key.pem", "-subj", `/CN=${domain}`, "-out", "req.csr"]);
    openssl(
      [
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        "key.pem",
        "-in",
        "req.csr",
        "-notext",
      ].concat(["-startdate", "20250101000000Z", "-enddate", "20250201000000Z", "-out", "cert.pem"]),
    );
    return readFileSync(join(dir, "cert.pem"), "utf8");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** notAfter of the certificate a floating IP serves (from the client). */
async function servedNotAfter(lab: Lab, fip: string): Promise<string> {
  const r = await lab.exec(
    "client",
    `openssl s_client -connect ${fip}:443 -servername ${lab.t.domain} </dev/null 2>/dev/null | openssl x509 -noout -enddate`,
    { timeoutMs: 15_000 },
  );
  return r.stdout.trim();
}

export const expiredCertificateRollout = drill(
  "18",
  "a rollout brings an expired certificate: the balancer refuses it and keeps serving",
  300_000,
  async (lab, report, section) => {
    const lb = "lb-a";
    const fip = lab.t.floatingIps.find((f) => f.home === lb)?.address;
    if (!fip) throw new Error(`no floating IP homed on ${lb}`);
    const secretFile = join(lab.dirs.store, "secrets", lab.t.secrets.tlsCertificate.parameter);
    const good = readFileSync(secretFile, "utf8");
    const key = readFileSync(join(lab.dirs.store, "secrets", lab.t.secrets.tlsKey.parameter), "utf8");
    const servedBefore = await servedNotAfter(lab, fip);
    const alarm = alarmName(lab.t, lb, "bundle-refused");
    expectAlarm(lab, alarm, `bundle-refused-${lb}`);
    markFault(lab);
    // `pulumi up` with an expired certificate in the stack config writes it to the parameter;
    // the rollout then runs each balancer's bootstrap, which applies it.
    writeFileSync(secretFile, expiredCertificate(lab.t.domain, key));
    try {
      await report.check(
        section,
        `${lb} refuses the expired certificate and keeps serving the live one`,
        async () => {
          const r = await lab.node(lb).execAsync([...ROLLOUT_COMMAND], { timeoutMs: 120_000 });
          if (r.status === 0) throw new Error(`the rollout applied an expired certificate: ${r.stdout}`);
          if (r.status !== APPLY_REFUSED_STATUS)
            throw new Error(
              `the rollout exited ${r.status}, not ${APPLY_REFUSED_STATUS} (refused, no retry)`,
            );
          if (!/expired/.test(r.stderr))
            throw new Error(`refused, but not for the expiry: ${r.stderr.slice(-800)}`);
          const served = await servedNotAfter(lab, fip);
          if (served !== servedBefore) throw new Error(`${fip} now serves ${served}, before ${servedBefore}`);
          return `rollout exit ${r.status}: "${r.stderr
            .split("\n")
            .find((l) => /expired/.test(l))
            ?.trim()}"; ${fip} still serves ${served}`;
        },
      );
      const runbook = await awaitAlarm(lab, alarm);
      await report.check(
        section,
        `runbook ${runbook}: the reason shown, the renewed certificate applied`,
        async () => {
          const run = await executeRunbook(runbookById(lab, runbook), (h) => lab.node(h), {
            operator: async (step) => {
              if (!step.command.startsWith("pulumi config set")) return undefined;
              writeFileSync(secretFile, good);
              return "lab stand-in for the fixed config and pulumi up: the parameter holds a valid certificate again";
            },
          });
          if (run.failure) throw new Error(run.failure);
          const reason = run.executed[0]?.stdout ?? "";
          if (!/expired/.test(reason)) throw new Error(`bundle-check does not show the reason: ${reason}`);
          return describeRun(run).join("; ");
        },
      );
    } finally {
      writeFileSync(secretFile, good);
      await lab.node(lb).execAsync([...ROLLOUT_COMMAND], { timeoutMs: 120_000 });
    }
    report.figure(
      section,
      "time from the refused rollout to the runbook's fix",
      seconds(lab.faultAt ?? Date.now(), Date.now()),
      "s",
    );
  },
);

/** Rows of about 1 KB each: WAL well past the lab's replay-lag threshold. */
const LAG_TABLE = "pypidrill_lag";
const lagRows = (t: Lab["t"]): number => Math.ceil((t.health.replayLagMb * 1_048_576 * 1.5) / 1000);

export const standbyStopsReplaying = drill(
  "19",
  "the standby receives WAL but stops replaying it",
  300_000,
  async (lab, report, section) => {
    const { primary, standby } = await primaryOf(lab);
    const alarm = alarmName(lab.t, standby, "replay-lag-bytes");
    expectAlarm(lab, alarm, `db-standby-lost-${standby}`);
    const sql = async (node: string, text: string, timeoutMs = 60_000): Promise<string> => {
      const r = await superSql(lab, node, text, "postgres", timeoutMs);
      if (r.status !== 0) throw new Error(`${node}: ${text}: exit ${r.status}: ${r.stderr}`);
      return r.stdout.trim();
    };
    const lagBytes = async (): Promise<number> =>
      Number(
        await sql(
          standby,
          "SELECT coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint",
        ),
      );
    // A replay stuck behind the WAL it has: what a paused replay, a long query holding replay
    // back, or a standby's slow disk look like. It still flushes, so commits go on.
    await sql(standby, "SELECT pg_wal_replay_pause()");
    try {
      await sql(
        primary,
        `CREATE TABLE ${LAG_TABLE} AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, ${lagRows(lab.t)}) g`,
        120_000,
      );
      // Detection counts from the moment the standby holds more than the threshold.
      const lag = await lagBytes();
      markFault(lab);
      report.figure(section, "received and not replayed on the standby", Math.round(lag / 1_048_576), "MiB");
      if (lag < lab.t.health.replayLagMb * 1_048_576)
        throw new Error(`${standby} holds only ${lag} bytes unreplayed; the drill wrote too little`);
      const runbook = await awaitAlarm(lab, alarm);
      await report.check(section, `runbook ${runbook} has ${standby} replaying again`, async () => {
        const run = await executeRunbook(runbookById(lab, runbook), (h) => lab.node(h), {
          stepTimeoutMs: 300_000,
        });
        if (run.failure) throw new Error(run.failure);
        const left = await lagBytes();
        if (left > 16 * 1_048_576) throw new Error(`${standby} still holds ${left} bytes unreplayed`);
        return `${describeRun(run).join("; ")}; ${left} bytes left to replay`;
      });
    } finally {
      await superSql(lab, standby, "SELECT pg_wal_replay_resume()").catch(() => undefined);
      await superSql(lab, primary, `DROP TABLE IF EXISTS ${LAG_TABLE}`).catch(() => undefined);
    }
  },
);
