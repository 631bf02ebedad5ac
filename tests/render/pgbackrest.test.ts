import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadLabTopology } from "../../lab/lib/config.js";
import { isolatedArgv } from "../../lab/lib/netns.js";
import { buildBundles } from "../../src/bundle.js";
import {
  BACKUP_UNITS,
  PGBACKREST_CONF_PATH,
  pgbackrestValue,
  renderBackupUnits,
  renderPgbackrestConf,
} from "../../src/render/pgbackrest.js";
import { renderPostgresConf, renderRecoveryConf } from "../../src/render/postgres.js";
import { nodeByName, type Topology } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const prod = topologyFor("prod");
const lab = loadLabTopology(".");
const dbA = (t: Topology) => nodeByName(t, "db-a");
const lines = (text: string) => text.split("\n");

describe("pgbackrest.conf", () => {
  it("points the AWS stack at its S3 repository bucket with the instance profile's credentials", () => {
    const conf = lines(renderPgbackrestConf(prod, dbA(prod)));
    const bucket = /^s3:\/\/([^/]+)\//.exec(prod.backup.repository)?.[1];
    expect(bucket).toMatch(/^pypi-prod-backups-/);
    expect(conf).toEqual(
      expect.arrayContaining([
        "repo1-type=s3",
        "repo1-path=/pgbackrest",
        `repo1-s3-bucket=${bucket}`,
        `repo1-s3-endpoint=s3.${prod.region}.amazonaws.com`,
        `repo1-s3-region=${prod.region}`,
        "repo1-s3-key-type=auto",
        `repo1-retention-full=${prod.backup.retentionFull}`,
        `repo1-retention-diff=${prod.backup.retentionDiff}`,
        `archive-push-queue-max=${prod.postgres.maxSlotWalKeepMb}MiB`,
        "[pypi]",
        "pg1-path=/var/lib/postgresql/15/main",
      ]),
    );
    // Keys in the file would be a secret on disk; the role's credentials come from IMDS.
    expect(conf.some((l) => /s3-key=|s3-key-secret=/.test(l))).toBe(false);
  });

  it("uses the lab's shared directory as a posix repository", () => {
    const conf = lines(renderPgbackrestConf(lab, dbA(lab)));
    expect(conf).toContain("repo1-type=posix");
    expect(conf).toContain(`repo1-path=${lab.backup.repository}`);
    expect(conf.some((l) => l.startsWith("repo1-s3"))).toBe(false);
  });

  it("refuses a value pgBackRest would read differently", () => {
    expect(() => pgbackrestValue("a\nrepo1-path=/x")).toThrow(/one non-empty line/);
    expect(() => pgbackrestValue(" padded")).toThrow(/edge spaces/);
    expect(pgbackrestValue(4)).toBe("4");
  });
});

describe("archiving in postgresql.conf", () => {
  it("archives through pgBackRest on every node, bounded by archive_timeout from config", () => {
    const conf = lines(renderPostgresConf(prod, dbA(prod)));
    expect(conf).toContain("archive_mode = on");
    expect(conf).toContain(
      `archive_command = 'pgbackrest --config=${PGBACKREST_CONF_PATH} --stanza=pypi archive-push %p'`,
    );
    expect(conf).toContain(`archive_timeout = ${prod.backup.archiveTimeoutSeconds}`);
    expect(conf).toContain(
      `restore_command = 'pgbackrest --config=${PGBACKREST_CONF_PATH} --stanza=pypi archive-get %f "%p"'`,
    );
    const other = lines(renderPostgresConf(prod, nodeByName(prod, "db-b")));
    expect(other.filter((l) => l.startsWith("archive_"))).toEqual(
      conf.filter((l) => l.startsWith("archive_")),
    );
  });

  it("puts restore_command in recovery.conf before Postgres 12", () => {
    const t11 = topologyFor("staging", 11);
    expect(renderRecoveryConf(t11, dbA(t11))).toMatch(
      /^restore_command = 'pgbackrest .* archive-get %f "%p"'$/m,
    );
    expect(renderPostgresConf(t11, dbA(t11))).not.toMatch(/^restore_command/m);
  });
});

describe("backup timers", () => {
  it("schedules full and differential backups and the restore test from config", () => {
    const units = new Map(renderBackupUnits(prod));
    const timer = (u: string) => units.get(`/etc/systemd/system/${u}.timer`) ?? "";
    expect(timer(BACKUP_UNITS.full)).toContain(`OnCalendar=${prod.backup.fullSchedule}`);
    expect(timer(BACKUP_UNITS.diff)).toContain(`OnCalendar=${prod.backup.diffSchedule}`);
    expect(timer(BACKUP_UNITS.restoreTest)).toContain(`OnCalendar=${prod.backup.restoreTestSchedule}`);
    expect(units.get(`/etc/systemd/system/${BACKUP_UNITS.full}.service`)).toContain(
      "ExecStart=/usr/local/sbin/pypi-node db-backup full",
    );
  });

  it("ships on both db nodes, with the timers among the services the agent starts", () => {
    for (const b of buildBundles(prod).filter((x) => x.role === "db")) {
      expect(b.services).toEqual(["postgresql", ...Object.values(BACKUP_UNITS), "pypi-health"]);
      expect(b.packages).toContain("pgbackrest");
      const conf = b.files.find((f) => f.path === PGBACKREST_CONF_PATH);
      expect(conf?.group).toBe("postgres");
      expect(conf?.mode).toBe("0640");
    }
    for (const b of buildBundles(prod).filter((x) => x.role !== "db"))
      expect(b.files.some((f) => f.path === PGBACKREST_CONF_PATH)).toBe(false);
  });
});

const canRun = requireTools("pgBackRest and systemd's calendar parser", [
  "pgbackrest",
  "systemd-analyze",
  "unshare",
]);

describe.runIf(canRun)("the real tools accept what is rendered", () => {
  const dir = mkdtempSync(join(tmpdir(), "pypi-pgbr-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("systemd parses every schedule (defaults, staging, prod, lab)", () => {
    const calendars = [prod, topologyFor("staging"), lab].flatMap((t) => [
      t.backup.fullSchedule,
      t.backup.diffSchedule,
      t.backup.restoreTestSchedule,
    ]);
    for (const c of new Set(calendars)) {
      const r = spawnSync("systemd-analyze", ["calendar", c], { encoding: "utf8" });
      expect(r.status, `${c}: ${r.stderr}`).toBe(0);
    }
    expect(spawnSync("systemd-analyze", ["calendar", "Sun 25:00"], { encoding: "utf8" }).status).not.toBe(0);
  });

  it("pgBackRest reads the lab's config: no option it does not know", () => {
    const repo = join(dir, "repo");
    const conf = join(dir, "lab.conf");
    writeFileSync(
      conf,
      renderPgbackrestConf({ ...lab, backup: { ...lab.backup, repository: repo } }, dbA(lab)).replace(
        /^log-path=.*$/m,
        `log-path=${dir}`,
      ),
    );
    const r = spawnSync("pgbackrest", [`--config=${conf}`, "--stanza=pypi", "--output=json", "info"], {
      encoding: "utf8",
    });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)[0].status.message).toBe("missing stanza path");
  });

  it("pgBackRest reads the S3 config (offline: it gets as far as the network)", () => {
    const conf = join(dir, "s3.conf");
    writeFileSync(
      conf,
      renderPgbackrestConf(prod, dbA(prod))
        .replace(/^log-path=.*$/m, `log-path=${dir}`)
        .replace(/^lock-path=.*$/m, `lock-path=${dir}`),
    );
    // No network at all inside a fresh namespace: nothing leaves this machine.
    const [cmd, ...args] = isolatedArgv({ net: true }, 'exec pgbackrest "$@"', [
      "pgbackrest",
      `--config=${conf}`,
      "--stanza=pypi",
      "--io-timeout=1",
      "--output=json",
      "info",
    ]);
    const r = spawnSync(cmd as string, args, { encoding: "utf8", timeout: 60_000 });
    const out = `${r.stdout}${r.stderr}`;
    expect(out).not.toMatch(/invalid|not valid|unknown option/i);
    expect(out).toMatch(
      /HostConnectError|unable to get address|could not resolve|Name or service not known|\[39\]|\[104\]/i,
    );
  });

  it("a typo in an option is what pgBackRest refuses", () => {
    const conf = join(dir, "typo.conf");
    writeFileSync(conf, `[global]\nrepo1-retension-full=2\nrepo1-path=${dir}\nlog-path=${dir}\n`);
    const r = spawnSync("pgbackrest", [`--config=${conf}`, "--stanza=pypi", "--output=json", "info"], {
      encoding: "utf8",
    });
    expect(`${r.stdout}${r.stderr}`).toMatch(/invalid option 'repo1-retension-full'/);
  });
});
