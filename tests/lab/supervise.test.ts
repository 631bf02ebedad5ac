/**
 * The lab's stand-in for systemd (lab/node/pypi-supervise.sh) with the agent's direct service
 * manager, in lab nodes of their own (pypisv<pid>-*): Restart= read from Debian's unit files,
 * the register job's path and timer units, enabled services started at boot, and stops that
 * wait for the old process (Apache's graceful-stop).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LabNode } from "../../lab/lib/lab-node.js";
import { createNamespace, destroyNamespace } from "../../lab/lib/netns.js";
import { sftpStateDir } from "../../src/app/sftp-events.js";
import { indexAppScript } from "../../src/app-artifact.js";
import { paths } from "../../src/layout.js";
import { agentScript, renderAgentEnv } from "../../src/render/agent.js";
import { HEALTH_UNIT, healthUnitPath, renderHealthTimer } from "../../src/render/health.js";
import {
  renderSshLimitsDropIn,
  renderUploadWatchService,
  sshLimitsDropInPath,
  uploadFsizeLimit,
  uploadWatchUnitPath,
} from "../../src/render/ssh-limits.js";
import { uploadDir } from "../../src/render/sshd.js";
import {
  appEnvPath,
  appServerUnitPath,
  indexScriptPath,
  REGISTER_UNIT,
  renderAppEnv,
  renderAppServerService,
  renderRegisterPath,
  renderRegisterService,
  renderRegisterTimer,
} from "../../src/render/systemd.js";
import { nodesWithRole } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { asLab, topologyFor } from "../support/topologies.js";

const canRun = requireTools("lab supervisor", [
  "ip",
  "unshare",
  "nsenter",
  "setpriv",
  "perl",
  "haproxy",
  "nginx",
  "apache2ctl",
  "/usr/sbin/sshd",
  "prlimit",
  "node",
]);

const tag = `pypisv${process.pid % 100000}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const LOG = "/var/log/pypi-supervise/supervise.log";

const HAPROXY_CFG = `global
  stats socket /run/haproxy/admin.sock mode 600 level admin
defaults
  mode tcp
  timeout connect 1s
  timeout client 5s
  timeout server 5s
listen upload
  bind 127.0.0.1:2222
  server backend 127.0.0.1:1
`;

/** Write a file in the node (stdin from node is a socket, which /dev/stdin cannot open). */
const put = (node: LabNode, path: string, content: string, mode = "0644") =>
  node.sh(`mkdir -p "$(dirname ${path})" && cat >${path} && chmod ${mode} ${path}`, { input: content });

/** Install the agent's library and a node.env for the direct service manager. */
async function installAgent(node: LabNode, role: string): Promise<void> {
  // The rendered node.env of a node of this role, then this test node's own identity.
  const t = asLab(topologyFor("staging"));
  const twin = t.nodes.find((n) => n.role === role);
  if (!twin) throw new Error(`no ${role} in the staging topology`);
  const env = [
    renderAgentEnv(t, twin, []),
    "PYPI_BACKEND='lab'",
    `PYPI_NODE='${node.name}'`,
    `PYPI_ROLE='${role}'`,
    "PYPI_IFACE='eth0'",
    "PYPI_SERVICE_MANAGER='direct'",
    "",
  ].join("\n");
  await put(node, paths.agentLib, agentScript("lib"));
  await put(node, paths.agentConfig, env);
}

/** A lib.sh call in the node, as pypi-node makes it. */
const agent = (node: LabNode, call: string) =>
  node.execAsync(["sh", "-c", `set -e; . ${paths.agentLib}; load_config; ${call}`], { timeoutMs: 60_000 });

const mainPid = (node: LabNode, pidfile: string): number => {
  const r = node.exec(["sh", "-c", `p=$(head -n 1 ${pidfile}) && kill -0 "$p" && echo "$p"`]);
  return r.status === 0 ? Number(r.stdout.trim()) : 0;
};

/** Milliseconds until `probe` holds (polled every 50 ms), or -1 after `timeoutMs`. */
async function msUntil(probe: () => boolean, timeoutMs: number): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    if (probe()) return Date.now() - start;
    await sleep(50);
  }
  return -1;
}

describe.skipIf(!canRun)("lab supervisor (systemd's part in direct mode)", { timeout: 90_000 }, () => {
  const disks: string[] = [];
  const nodes: LabNode[] = [];
  let lb: LabNode;
  let app: LabNode;
  const t = asLab(topologyFor("staging"));
  const user = t.upload.users[0]?.name ?? "";
  const upload = uploadDir(t, user);

  const startNode = async (name: string, role: string): Promise<LabNode> => {
    const ns = `${tag}-${name}`;
    createNamespace(ns);
    const disk = mkdtempSync(join(tmpdir(), `pypi-sv-${name}-`));
    disks.push(disk);
    const node = await LabNode.start(name, ns, disk);
    nodes.push(node);
    await installAgent(node, role);
    return node;
  };

  beforeAll(async () => {
    lb = await startNode("lb", "balancer");
    app = await startNode("app", "app");
    await put(lb, "/etc/haproxy/haproxy.cfg", HAPROXY_CFG);
  });

  afterAll(() => {
    for (const node of nodes) {
      node.stop();
      destroyNamespace(node.ns);
    }
    for (const disk of disks) rmSync(disk, { recursive: true, force: true });
  });

  it("restarts haproxy after kill -9 of its master, as Restart=always says", async () => {
    const started = await agent(lb, "svc_start haproxy");
    expect(started.status, started.stderr).toBe(0);
    const first = mainPid(lb, "/run/haproxy.pid");
    expect(first).toBeGreaterThan(0);
    await sleep(500);
    lb.run(["kill", "-9", String(first)]);
    const ms = await msUntil(() => {
      const pid = mainPid(lb, "/run/haproxy.pid");
      return pid !== 0 && pid !== first;
    }, 5_000);
    const log = lb.run(["cat", LOG]);
    expect(ms, log).toBeGreaterThanOrEqual(0);
    console.log(`haproxy: master killed, restarted by the supervisor after ${ms} ms (RestartSec=100ms)`);
    expect(ms).toBeLessThan(1_500);
    expect(log).toMatch(/haproxy: main process \d+ ended \(signal 9\); Restart=always, restarting in 100 ms/);
    expect((await agent(lb, "svc_running haproxy")).status).toBe(0);
  });

  it("leaves nginx down after kill -9 (no Restart= in nginx.service) and kills its workers", async () => {
    const started = await agent(lb, "svc_start nginx");
    expect(started.status, started.stderr).toBe(0);
    const master = mainPid(lb, "/run/nginx.pid");
    expect(master).toBeGreaterThan(0);
    await sleep(500);
    lb.run(["kill", "-9", String(master)]);
    await sleep(2_000);
    const log = lb.run(["cat", LOG]);
    expect(log).toMatch(/nginx: main process \d+ ended \(signal 9\); Restart=no, left stopped/);
    expect(log).toMatch(/KillMode=mixed: killing what is left/);
    expect(lb.exec(["pgrep", "-x", "nginx"]).status).toBe(1);
    expect((await agent(lb, "svc_running nginx")).status).not.toBe(0);
    // The agent (its watchdog, on a balancer) starts it again on a free port.
    expect((await agent(lb, "svc_start nginx")).status).toBe(0);
    expect(mainPid(lb, "/run/nginx.pid")).toBeGreaterThan(0);
  });

  it("stops Apache and starts it again three times; each start finds the port free", async () => {
    expect((await agent(app, "svc_start apache2")).status).toBe(0);
    let previous = mainPid(app, "/run/apache2/apache2.pid");
    for (let i = 0; i < 3; i++) {
      // A client mid-request keeps a worker busy, so graceful-stop has something to wait for.
      const slow = app.spawn(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80; sleep 1"]);
      const r = await agent(app, "svc_stop apache2 && svc_start apache2");
      slow.kill("SIGKILL");
      expect(r.status, `round ${i + 1}: ${r.stderr}`).toBe(0);
      const pid = mainPid(app, "/run/apache2/apache2.pid");
      expect(pid, `round ${i + 1}`).toBeGreaterThan(0);
      expect(pid).not.toBe(previous);
      previous = pid;
    }
  });

  it("stops Apache as systemd stops Debian's unit: graceful-stop, then TERM to the parent", async () => {
    expect((await agent(app, "svc_running apache2 || svc_start apache2")).status).toBe(0);
    // Half a request: graceful-stop alone would wait for its read timeout (20 s and more).
    const slow = app.spawn([
      "bash",
      "-c",
      "exec 3<>/dev/tcp/127.0.0.1/80; printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n' >&3; sleep 30",
    ]);
    await sleep(300);
    const started = Date.now();
    const r = await agent(app, "svc_stop apache2");
    const stopMs = Date.now() - started;
    slow.kill("SIGKILL");
    expect(r.status, r.stderr).toBe(0);
    // TERM makes the gracefully stopping parent reclaim its children (TERM, then KILL after
    // about 10 s) instead of waiting on the client.
    expect(stopMs).toBeLessThan(15_000);
    expect(app.run(["tail", "-n", "5", "/var/log/apache2/error.log"])).toMatch(
      /AH0004[56]: child process \d+ still did not exit/,
    );
    expect((await agent(app, "svc_start apache2")).status).toBe(0);
  });

  it("restarts Apache killed by a signal but not one that exits cleanly (Restart=on-abort)", async () => {
    const first = mainPid(app, "/run/apache2/apache2.pid");
    // `kill -9 0` would end this test run's own process group.
    expect(first).toBeGreaterThan(0);
    app.run(["kill", "-9", String(first)]);
    const ms = await msUntil(() => {
      const pid = mainPid(app, "/run/apache2/apache2.pid");
      return pid !== 0 && pid !== first && app.run(["cat", LOG]).includes("apache2: restarted");
    }, 5_000);
    expect(ms, app.run(["cat", LOG])).toBeGreaterThanOrEqual(0);
    // An operator's graceful-stop behind the agent's back: exit 0, which on-abort leaves alone.
    const second = mainPid(app, "/run/apache2/apache2.pid");
    app.run(["apache2ctl", "graceful-stop"]);
    await msUntil(() => app.run(["cat", LOG]).includes(`main process ${second} ended`), 5_000);
    await sleep(500);
    expect(mainPid(app, "/run/apache2/apache2.pid")).toBe(0);
    expect(app.run(["cat", LOG])).toContain(
      `apache2: main process ${second} ended (exit 0); Restart=on-abort, left stopped`,
    );
  });

  it("runs the register job when an upload directory fills, and on its timer", async () => {
    // The rendered units, with a drop-in that shortens the retry timer, as a bundle could ship.
    const units: [string, string][] = [
      [`/etc/systemd/system/${REGISTER_UNIT}.service`, renderRegisterService(t)],
      [`/etc/systemd/system/${REGISTER_UNIT}.path`, renderRegisterPath(t)],
      [`/etc/systemd/system/${REGISTER_UNIT}.timer`, renderRegisterTimer()],
      [
        `/etc/systemd/system/${REGISTER_UNIT}.timer.d/lab-test.conf`,
        "[Timer]\nOnUnitInactiveSec=\nOnUnitInactiveSec=2s\n",
      ],
      [appEnvPath, renderAppEnv(t)],
    ];
    for (const [path, content] of units) await put(app, path, content);
    // The job: record who ran it and how, prove the sandbox, then take the uploads away.
    const job = [
      "#!/bin/sh",
      `log=${t.storage.packageRoot}/runs`,
      'echo "run $(id -un) $1 db=$PYPI_DB_NAME" >>"$log"',
      "if touch /etc/pypi-job-test 2>/dev/null; then echo 'root fs writable' >>\"$log\"; fi",
      `rm -f ${upload}/*`,
      "",
    ].join("\n");
    await put(app, indexScriptPath, job, "0755");
    await app.sh(
      `install -d -o www-data -g www-data ${t.storage.packageRoot} && install -d -o www-data -g www-data ${upload}`,
    );
    const runs = () => app.exec(["cat", `${t.storage.packageRoot}/runs`]).stdout;

    expect((await agent(app, `svc_start ${REGISTER_UNIT}`)).status).toBe(0);
    expect((await agent(app, `svc_running ${REGISTER_UNIT}`)).status).toBe(0);
    await sleep(800);
    expect(runs()).toBe("");

    await app.sh(`touch ${upload}/demo-1.0-py3-none-any.whl && chown www-data ${upload}/*`);
    const ms = await msUntil(() => runs().includes(`run www-data register db=${t.postgres.database}`), 5_000);
    expect(ms, app.run(["sh", "-c", `cat ${LOG} /var/log/pypi-supervise/*.log`])).toBeGreaterThanOrEqual(0);
    console.log(`register: upload seen and the job run after ${ms} ms`);
    expect(runs()).not.toContain("root fs writable");
    expect(app.run(["ls", "-A", upload]).trim()).toBe("");
    // The drop-in's OnUnitInactiveSec=2s: the timer runs it again without any upload.
    const again = await msUntil(
      () =>
        runs()
          .split("\n")
          .filter((l) => l.startsWith("run ")).length >= 2,
      5_000,
    );
    expect(again, runs()).toBeGreaterThanOrEqual(0);
    expect(app.run(["cat", LOG])).toMatch(/pypi-index-register\.timer: OnUnitInactiveSec/);
  });

  it("runs the health job again right after a run that outlasted its OnUnitActiveSec= (as systemd does)", async () => {
    const fast = { ...t, health: { ...t.health, intervalSeconds: 1 } };
    const log = "/var/log/pypi-health-test.log";
    // The rendered timer; a service whose run takes three intervals.
    await put(app, healthUnitPath("timer"), renderHealthTimer(fast));
    await put(
      app,
      healthUnitPath("service"),
      `[Service]\nType=oneshot\nExecStart=/bin/sh -c 'date +%%s.%%N >>${log}; sleep 3'\n`,
    );
    expect((await agent(app, `svc_start ${HEALTH_UNIT}`)).status).toBe(0);
    const runs = () =>
      app
        .run(["sh", "-c", `cat ${log} 2>/dev/null || true`])
        .trim()
        .split("\n")
        .filter(Boolean);
    const ms = await msUntil(() => runs().length >= 3, 12_000);
    const starts = runs().map(Number);
    expect((await agent(app, `svc_stop ${HEALTH_UNIT}`)).status).toBe(0);
    expect(ms, app.run(["cat", LOG])).toBeGreaterThanOrEqual(0);
    // Each run starts as soon as the one before ends: about 3 s apart, never an elapse lost.
    const gaps = starts.slice(1).map((at, i) => at - (starts[i] ?? 0));
    for (const gap of gaps.slice(0, 2)) expect(gap).toBeLessThan(4.5);
  });

  it("mounts a oneshot makes are the node's, unless its unit asks for a namespace of its own (as systemd)", async () => {
    const fast = { ...t, health: { ...t.health, intervalSeconds: 1 } };
    const mounted = (dir: string) => app.run(["sh", "-c", `findmnt -n -o FSTYPE ${dir} || true`]).trim();
    const runOnce = async (extra: string, dir: string) => {
      await put(app, healthUnitPath("timer"), renderHealthTimer(fast));
      await put(
        app,
        healthUnitPath("service"),
        `[Service]\nType=oneshot\n${extra}ExecStart=/bin/sh -c 'mountpoint -q ${dir} || { mkdir -p ${dir}; mount -t tmpfs pypisv ${dir}; }; touch ${dir}.ran'\n`,
      );
      expect((await agent(app, `svc_start ${HEALTH_UNIT}`)).status).toBe(0);
      const ran = await msUntil(() => app.exec(["test", "-e", `${dir}.ran`]).status === 0, 10_000);
      expect((await agent(app, `svc_stop ${HEALTH_UNIT}`)).status).toBe(0);
      expect(ran, app.run(["cat", LOG])).toBeGreaterThanOrEqual(0);
    };
    // The bootstrap's unit has no sandbox: the data volume it mounts is there for Postgres too.
    await runOnce("", "/srv/pypisv-shared");
    expect(mounted("/srv/pypisv-shared")).toBe("tmpfs");
    await runOnce("PrivateTmp=yes\n", "/srv/pypisv-private");
    expect(mounted("/srv/pypisv-private")).toBe("");
    await app.sh("umount /srv/pypisv-shared");
  });

  it("runs the upload watcher from its unit, and sshd under the drop-in's limit, restarted when it changes", async () => {
    expect((await agent(app, `svc_stop ${REGISTER_UNIT}`)).status).toBe(0);
    const node = nodesWithRole(t, "app")[0];
    if (!node) throw new Error("no app node");
    const root = t.storage.packageRoot;
    await put(app, indexScriptPath, indexAppScript(), "0755");
    await put(app, appEnvPath, renderAppEnv(t));
    await put(app, uploadWatchUnitPath, renderUploadWatchService(t, node));
    await put(app, sshLimitsDropInPath, renderSshLimitsDropIn(t));
    await app.sh(`install -d -o www-data -g www-data -m 0755 ${sftpStateDir(root)}`);
    const scan = `${sftpStateDir(root)}/${node.name}.json`;
    const fsize = (pidfile: string) =>
      app
        .run([
          "prlimit",
          "--pid",
          String(mainPid(app, pidfile)),
          "--fsize",
          "-o",
          "SOFT,HARD",
          "--noheadings",
          "--raw",
        ])
        .trim();

    const watch = await agent(app, "svc_start pypi-upload-watch");
    expect(watch.status, watch.stderr).toBe(0);
    const first = mainPid(app, "/run/pypi-upload-watch.pid");
    expect(first).toBeGreaterThan(0);
    // Published by the app as shipped, as www-data, under the node's name from ExecStart=.
    const seen = await msUntil(() => app.exec(["stat", "-c", "%U", scan]).stdout === "www-data\n", 10_000);
    expect(seen, app.run(["sh", "-c", "cat /var/log/pypi-upload-watch.log"])).toBeGreaterThanOrEqual(0);

    const ssh = await agent(app, "svc_start ssh");
    expect(ssh.status, ssh.stderr).toBe(0);
    const limit = uploadFsizeLimit(t);
    expect(fsize("/run/sshd.pid")).toBe(`${limit} ${limit}`);
    // A reload keeps the limits (sshd re-executes itself on HUP); a new LimitFSIZE= restarts it.
    const sshdUp = () => msUntil(() => mainPid(app, "/run/sshd.pid") > 0, 5_000);
    const same = await agent(app, "svc_reload ssh");
    expect(same.status, same.stderr).toBe(0);
    expect(same.stderr).not.toMatch(/restarting it/);
    expect(await sshdUp()).toBeGreaterThanOrEqual(0);
    expect(fsize("/run/sshd.pid")).toBe(`${limit} ${limit}`);
    await put(app, sshLimitsDropInPath, renderSshLimitsDropIn(t).replace(`=${limit}`, `=${limit + 1}`));
    const changed = await agent(app, "svc_reload ssh");
    expect(changed.status, changed.stderr).toBe(0);
    expect(changed.stderr).toMatch(/ssh: pid \d+ runs with fsize .*; restarting it/);
    expect(await sshdUp()).toBeGreaterThanOrEqual(0);
    expect(fsize("/run/sshd.pid")).toBe(`${limit + 1} ${limit + 1}`);

    // Restart=always: the supervisor starts it again.
    app.run(["kill", "-9", String(first)]);
    const back = await msUntil(() => {
      const pid = mainPid(app, "/run/pypi-upload-watch.pid");
      return pid !== 0 && pid !== first;
    }, 5_000);
    expect(back, app.run(["cat", LOG])).toBeGreaterThanOrEqual(0);
    expect((await agent(app, "svc_stop ssh && svc_stop pypi-upload-watch")).status).toBe(0);
    expect(mainPid(app, "/run/pypi-upload-watch.pid")).toBe(0);
  });

  it("runs the app server from its unit: as its User=, in a fresh RuntimeDirectory=, HUP-reloaded, restarted after kill -9", async () => {
    await put(app, indexScriptPath, indexAppScript(), "0755");
    await put(app, appEnvPath, renderAppEnv(t));
    await put(app, appServerUnitPath, renderAppServerService(t));
    // A leftover of an earlier run in the runtime directory is gone after the start, as systemd does.
    await app.sh("mkdir -p /run/pypi-index && touch /run/pypi-index/stale");
    const started = await agent(app, "svc_start pypi-index");
    expect(started.status, started.stderr).toBe(0);
    const pidfile = "/run/pypi-index.pid";
    const workers = (primary: number): number[] =>
      app
        .run(["sh", "-c", `pgrep -P ${primary} || true`])
        .split("\n")
        .filter(Boolean)
        .map(Number);
    const primary = mainPid(app, pidfile);
    const listening = await msUntil(
      () =>
        workers(primary).length === t.app.maxProcesses &&
        app.exec(["test", "-S", paths.appSocket]).status === 0,
      15_000,
    );
    expect(listening, app.run(["cat", "/var/log/pypi-index.log"])).toBeGreaterThanOrEqual(0);
    expect(
      app.run(["stat", "-c", "%U %G %a", "/run/pypi-index", paths.appSocket]).trim().split("\n"),
    ).toEqual(["www-data www-data 750", "www-data www-data 755"]);
    expect(app.exec(["test", "-e", "/run/pypi-index/stale"]).status).toBe(1);
    expect(app.run(["ps", "-o", "user=", "-p", String(primary)]).trim()).toBe("www-data");

    // Reload (ExecReload= sends HUP): the same primary, every worker new.
    const before = workers(primary);
    const reload = await agent(app, "svc_reload pypi-index");
    expect(reload.status, reload.stderr).toBe(0);
    const rolled = await msUntil(() => {
      const now = workers(primary);
      return now.length === before.length && now.every((w) => !before.includes(w));
    }, 20_000);
    expect(rolled, app.run(["cat", "/var/log/pypi-index.log"])).toBeGreaterThanOrEqual(0);
    expect(mainPid(app, pidfile)).toBe(primary);

    // Restart=always, RestartSec=1: a new primary, its workers, and the old workers gone.
    app.run(["kill", "-9", String(primary)]);
    const back = await msUntil(() => {
      const pid = mainPid(app, pidfile);
      return pid !== 0 && pid !== primary && workers(pid).length === t.app.maxProcesses;
    }, 15_000);
    expect(back, app.run(["cat", LOG])).toBeGreaterThanOrEqual(0);
    const orphans = app.run([
      "sh",
      "-c",
      `pgrep -f '[i]ndex.fcgi serve' | grep -vx "$(cat ${pidfile})" | xargs -r ps -o ppid= -p | grep -c '^ *1$' || true`,
    ]);
    expect(orphans.trim(), app.run(["ps", "-eo", "pid,ppid,sid,stat,args"])).toBe("0");

    expect((await agent(app, "svc_stop pypi-index")).status).toBe(0);
    expect(mainPid(app, pidfile)).toBe(0);
    expect(app.run(["sh", "-c", "pgrep -fc '[i]ndex.fcgi serve' || true"]).trim()).toBe("0");
  });

  it("starts the enabled services at boot, after a crash, in their units' After= order", async () => {
    // A drop-in orders haproxy after nginx (by name alone it would go first).
    await put(lb, "/etc/systemd/system/haproxy.service.d/lab-order.conf", "[Unit]\nAfter=nginx.service\n");
    // A unit of the node's own, enabled as a bootstrap enables its unit.
    await put(
      lb,
      "/etc/systemd/system/pypi-lab-test.service",
      '[Service]\nType=oneshot\nExecStart=/bin/sh -c "echo $$PYPI_X > /var/lib/pypi-lab-test"\nEnvironment=PYPI_X=booted\n\n[Install]\nWantedBy=multi-user.target\n',
    );
    await lb.sh("systemctl enable pypi-lab-test.service");
    await lb.crash();
    await lb.boot();
    await lb.waitBooted(30_000);
    expect(mainPid(lb, "/run/haproxy.pid")).toBeGreaterThan(0);
    expect(mainPid(lb, "/run/nginx.pid")).toBeGreaterThan(0);
    const log = lb.run(["cat", LOG]);
    expect(log).toMatch(/boot: starting nginx .*haproxy/);
    expect(log).toMatch(/boot: starting .*pypi-lab-test\.service/);
    expect(
      await msUntil(() => lb.exec(["cat", "/var/lib/pypi-lab-test"]).stdout === "booted\n", 5_000),
    ).toBeGreaterThanOrEqual(0);
    // How it ended, for whoever waits on it (the lab, for the bootstrap's unit).
    expect(
      await msUntil(
        () => lb.exec(["cat", "/run/pypi-supervise/job/pypi-lab-test.service/status"]).stdout === "0\n",
        5_000,
      ),
    ).toBeGreaterThanOrEqual(0);
    // Active again, so supervised again.
    const pid = mainPid(lb, "/run/haproxy.pid");
    lb.run(["kill", "-9", String(pid)]);
    expect(
      await msUntil(() => {
        const p = mainPid(lb, "/run/haproxy.pid");
        return p !== 0 && p !== pid;
      }, 5_000),
    ).toBeGreaterThanOrEqual(0);
  });
});
