/**
 * The app server (appserver runtime) as its unit starts it, behind the rendered Apache site:
 * workers that die are replaced, a reload replaces every worker without a failed request, a
 * reload onto a script that cannot start keeps the old workers, and a stop lets a request in
 * flight finish.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppSandbox, PG_BIN } from "../../lab/lib/app-sandbox.js";
import { parseServeArgs } from "../../src/app/appserver.js";
import { paths } from "../../src/layout.js";
import { indexFcgiScript } from "../../src/render/apache.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";

const canRun = requireTools("app server (apache mod_proxy_fcgi, postgres 15)", [
  "unshare",
  "nsenter",
  "curl",
  "setpriv",
  "apache2",
  `${PG_BIN}/postgres`,
  "/usr/lib/apache2/modules/mod_proxy_fcgi.so",
]);

describe("serve arguments", () => {
  it("parses the unit's command line and refuses what it does not know", () => {
    expect(parseServeArgs(["--listen", "/run/x.sock", "--workers", "4", "--drain-seconds", "30"])).toEqual({
      listen: { path: "/run/x.sock" },
      workers: 4,
      drainMs: 30_000,
    });
    expect(parseServeArgs(["--listen", "127.0.0.1:9000"])).toEqual({
      listen: { host: "127.0.0.1", port: 9000 },
      workers: undefined,
      drainMs: 30_000,
    });
    expect(() => parseServeArgs(["--workers", "4"])).toThrow(/--listen is required/);
    expect(() => parseServeArgs(["--listen", "/x", "--workers", "0"])).toThrow(
      '--workers: expected a whole number from 1 to 256, got "0"',
    );
    expect(() => parseServeArgs(["--listen", "/x", "--threads", "2"])).toThrow(
      /unexpected argument "--threads"/,
    );
  });
});

describe.skipIf(!canRun)("app server behind Apache (mod_proxy_fcgi)", () => {
  let sb: AppSandbox;
  const workers = (): number[] => sb.appServerPids().workers.sort((a, b) => a - b);
  const until = async (what: string, ok: () => boolean, ms = 10_000): Promise<void> => {
    const end = Date.now() + ms;
    while (!ok()) {
      if (Date.now() > end)
        throw new Error(
          `timed out: ${what}\n${sb.sh("tail -20 /var/log/pypi-index.log; ps -eo pid,ppid,stat,etime,args").stdout}`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  /** `n` GETs of an app-served path (a redirect), `parallel` at a time, in the background. */
  const load = (n: number, parallel: number, out: string): void => {
    sb.sh(
      `setsid sh -c "seq ${n} | xargs -P ${parallel} -I{} curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 http://127.0.0.1:${sb.t.app.httpPort}/simple/Some_Project/ > ${out}; touch ${out}.done" >/dev/null 2>&1 &`,
    );
  };
  const codes = async (out: string): Promise<Record<string, number>> => {
    await until(
      `${out} finished`,
      () => sb.sh(`[ -e ${out}.done ]`, { allowFail: true }).status === 0,
      60_000,
    );
    const tally: Record<string, number> = {};
    for (const c of sb.sh(`cat ${out}`).stdout.split("\n").filter(Boolean)) tally[c] = (tally[c] ?? 0) + 1;
    return tally;
  };

  beforeAll(async () => {
    sb = await AppSandbox.start({
      prefix: "pypi-appserver-",
      topology: topologyFor("staging", 15),
      runtime: "appserver",
    });
    // The primary binds the socket at once; each worker says when it accepts.
    await until("every worker listens", () =>
      sb
        .sh("cat /var/log/pypi-index.log")
        .stdout.includes(`(${sb.t.app.maxProcesses} of ${sb.t.app.maxProcesses})`),
    );
  }, 120_000);

  afterAll(() => {
    if (sb && process.env.PYPI_APP_KEEP_LOGS) console.log(sb.sh("cat /var/log/pypi-index.log").stdout);
    sb?.stop();
  });

  it("runs appMaxProcesses workers as www-data on a socket only www-data reaches", () => {
    expect(workers()).toHaveLength(sb.t.app.maxProcesses);
    const { primary } = sb.appServerPids();
    expect(sb.sh(`ps -o user= -p ${primary},${workers().join(",")} | sort -u`).stdout.trim()).toBe(
      "www-data",
    );
    expect(
      sb.sh(`stat -c '%U %a' ${paths.appSocket} $(dirname ${paths.appSocket})`).stdout.trim().split("\n"),
    ).toEqual(["www-data 755", "www-data 750"]);
    // Another user cannot connect: the directory keeps them out.
    const other = sb.exec(["curl", "-s", "--unix-socket", paths.appSocket, "http://x/"], {
      user: "nobody",
      allowFail: true,
    });
    expect(other.status).toBe(7);
    expect(sb.http("/simple/Some_Project/").status).toBe(301);
  });

  it("replaces a worker killed with SIGKILL, and keeps serving", async () => {
    const before = workers();
    sb.sh(`kill -9 ${before[0]}`);
    await until("a replacement worker", () => {
      const now = workers();
      return now.length === before.length && !now.includes(before[0] as number);
    });
    expect(sb.sh("cat /var/log/pypi-index.log").stdout).toMatch(
      new RegExp(`worker ${before[0]} died \\(signal SIGKILL\\); starting another`),
    );
    const out = `${sb.scratch}/after-kill`;
    load(200, 8, out);
    expect(await codes(out)).toEqual({ 301: 200 });
  }, 60_000);

  it("every worker killed at once: requests wait for the replacements, none is refused", async () => {
    const out = `${sb.scratch}/all-killed`;
    load(300, 8, out);
    await new Promise((r) => setTimeout(r, 300));
    const before = workers();
    sb.sh(`kill -9 ${before.join(" ")}`);
    await until("every worker replaced", () => {
      const now = workers();
      return now.length === before.length && now.every((p) => !before.includes(p));
    });
    const tally = await codes(out);
    // A request a killed worker had accepted dies with it (Apache answers 503, nginx retries it
    // on the other app server); every other one waits in the kept socket's backlog.
    expect(tally[301] ?? 0).toBeGreaterThanOrEqual(300 - 8);
    expect(Object.keys(tally).filter((c) => c !== "301" && c !== "503")).toEqual([]);
    expect(sb.sh("cat /var/log/pypi-index.log").stdout).not.toMatch(/giving up/);
  }, 60_000);

  it("reload (SIGHUP) replaces every worker, one at a time, without a failed request", async () => {
    const { primary } = sb.appServerPids();
    const before = workers();
    const out = `${sb.scratch}/during-reload`;
    load(1500, 8, out);
    await new Promise((r) => setTimeout(r, 200));
    sb.sh(`kill -HUP ${primary}`);
    await until(
      "every worker replaced",
      () => {
        const now = workers();
        return now.length === before.length && now.every((p) => !before.includes(p));
      },
      30_000,
    );
    expect(await codes(out)).toEqual({ 301: 1500 });
    expect(sb.appServerPids().primary).toBe(primary);
    expect(sb.sh("cat /var/log/pypi-index.log").stdout).toContain(
      `reload: ${before.length} workers replaced`,
    );
  }, 90_000);

  it("a reload onto a script that cannot start keeps the old workers serving", async () => {
    const { primary } = sb.appServerPids();
    const before = workers();
    sb.sh(
      `cp ${indexFcgiScript} ${sb.scratch}/index.good && printf '#!/usr/bin/node\\nprocess.exit(3)\\n' > ${indexFcgiScript}`,
    );
    try {
      sb.sh(`kill -HUP ${primary}`);
      await until("the reload gives up", () =>
        sb.sh("cat /var/log/pypi-index.log").stdout.includes("reload: a new worker did not start listening"),
      );
      expect(workers()).toEqual(before);
      expect(sb.http("/simple/Some_Project/").status).toBe(301);
    } finally {
      sb.sh(`cat ${sb.scratch}/index.good > ${indexFcgiScript}`);
    }
  }, 60_000);

  it("stop (SIGTERM) lets a request in flight finish, then the primary exits", async () => {
    const { primary } = sb.appServerPids();
    // An upload whose body takes about 2 s to arrive: the app answers once it has all of it.
    sb.sh(
      `setsid sh -c "head -c 60000 /dev/zero | curl -s -o /dev/null -w '%{http_code}' --limit-rate 30k -H 'Content-Type: multipart/form-data; boundary=x' --data-binary @- http://127.0.0.1:${sb.t.app.httpPort}/legacy/ > ${sb.scratch}/slow; touch ${sb.scratch}/slow.done" >/dev/null 2>&1 &`,
    );
    await new Promise((r) => setTimeout(r, 700));
    sb.sh(`kill -TERM ${primary}`);
    await until(
      "the slow upload answered",
      () => sb.sh(`[ -e ${sb.scratch}/slow.done ]`, { allowFail: true }).status === 0,
    );
    // The app's own refusal (no credentials), not a proxy error from a vanished worker.
    expect(
      sb.sh(`cat ${sb.scratch}/slow`).stdout,
      sb.sh("tail -5 /var/log/apache2/*error*.log; tail -8 /var/log/pypi-index.log").stdout,
    ).toMatch(/^40[0-3]$/);
    // Gone, or a zombie nobody reaps here (its starter has exited).
    await until(
      "the primary exits",
      () => !/^[^Z]/.test(sb.sh(`ps -o stat= -p ${primary} || true`).stdout.trim()),
    );
    expect(sb.sh("cat /var/log/pypi-index.log").stdout).toContain("all workers stopped");
    // Started again from its unit, as systemd's Restart= would.
    sb.startAppServer();
    await until("every worker started again", () => workers().length === sb.t.app.maxProcesses);
    // Bound by the primary at once; answered as soon as the first worker accepts.
    await until("serving again", () => sb.http("/simple/Some_Project/").status === 301);
  }, 60_000);
});
