/**
 * The DRBD fence-peer handler: its exit codes against DRBD 8.4's contract, with fake
 * `cl_status` and drbd-peer-outdater; then run by the real drbdadm 8.4 from the rendered
 * resource; and what it relies on checked in Debian's own heartbeat binaries.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isolatedArgv } from "../../lab/lib/netns.js";
import { DRBD_RESOURCE, drbdPaths, renderDrbdResource } from "../../src/render/drbd.js";
import { storagePair } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";
import { topologyFor } from "../support/topologies.js";
import { type FakeCloud, fakeCloud } from "./fake-cloud.js";

const t = topologyFor("prod");
const [home, peer] = storagePair(t);
const DRBD_ENV = { DRBD_RESOURCE, DRBD_PEER: peer.name };

/**
 * A fake that logs its argv to <name>.log and plays its answers in order (the last repeats):
 * each answer is an exit status and what it prints on stdout.
 */
function sequenced(dir: string, name: string, answers: readonly [number, string][]): string {
  const cases = answers
    .map(([status, out], i) => `  ${i + 1}) printf '%s' '${out}'; exit ${status} ;;`)
    .join("\n");
  const [lastStatus, lastOut] = answers[answers.length - 1] ?? [0, ""];
  return `#!/bin/sh
echo "$*" >>'${dir}/${name}.log'
n=$(wc -l <'${dir}/${name}.log')
case $n in
${cases}
  *) printf '%s' '${lastOut}'; exit ${lastStatus} ;;
esac
`;
}

/** `cl_status nodestatus <peer>` answering these states in turn ("dead" exits 1, as the real one). */
const clStatus = (dir: string, ...states: string[]) =>
  sequenced(
    dir,
    "cl_status",
    states.map((s) => [s === "dead" || s === "" ? 1 : 0, s === "" ? "" : `${s}\n`]),
  );

/** drbd-peer-outdater exiting with these codes in turn. */
const outdater = (dir: string, ...codes: number[]) =>
  sequenced(
    dir,
    "drbd-peer-outdater",
    codes.map((c) => [c, ""]),
  );

describe("pypi-drbd fence-peer", () => {
  let fakes: FakeCloud;
  beforeEach(() => {
    fakes = fakeCloud("");
  });
  afterEach(() => fakes.cleanup());
  const calls = (name: string) =>
    existsSync(join(fakes.dir, `${name}.log`))
      ? readFileSync(join(fakes.dir, `${name}.log`), "utf8")
          .trim()
          .split("\n")
      : [];
  const fence = () => fakes.run("pypi-drbd", ["fence-peer"], DRBD_ENV);
  const ASKED = `-t 5 -r ${DRBD_RESOURCE} -p ${peer.name}`;

  it("reports a peer Heartbeat holds dead at once (5), without dopd", () => {
    fakes.install("cl_status", clStatus(fakes.dir, "dead"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, 4));
    const r = fence();
    expect(r.status, r.stderr).toBe(5);
    expect(calls("cl_status")).toEqual([`nodestatus ${peer.name}`]);
    expect(calls("drbd-peer-outdater")).toEqual([]);
  });

  it.each([
    [4, "the live peer's disk is now Outdated"],
    [3, "the peer's disk is Inconsistent"],
    [6, "the peer is Primary: DRBD outdates this node's disk"],
  ])("passes dopd's answer %i through (%s)", (code) => {
    fakes.install("cl_status", clStatus(fakes.dir, "active"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, code));
    const r = fence();
    expect(r.status, r.stderr).toBe(code);
    expect(calls("drbd-peer-outdater")).toEqual([ASKED]);
  });

  it("asks again when dopd is being respawned (its client says 5 for a live peer)", () => {
    fakes.install("cl_status", clStatus(fakes.dir, "active"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, 5, 4));
    const r = fence();
    expect(r.status, r.stderr).toBe(4);
    expect(calls("drbd-peer-outdater")).toEqual([ASKED, ASKED]);
    expect(fakes.sleeps()).toEqual([1]);
  });

  it("reports 5 once Heartbeat declares the peer dead between tries", () => {
    fakes.install("cl_status", clStatus(fakes.dir, "active", "dead"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, 5));
    const r = fence();
    expect(r.status, r.stderr).toBe(5);
    expect(calls("drbd-peer-outdater")).toHaveLength(1);
  });

  it.each([
    [5, "no answer from dopd"],
    [20, "dopd: unknown answer"],
    [21, "dopd: another outdater runs for the resource"],
    [127, "drbd-peer-outdater not installed"],
  ])("never calls a live peer dead: outdater %i four times -> 1 (%s)", (code) => {
    fakes.install("cl_status", clStatus(fakes.dir, "active"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, code));
    const r = fence();
    expect(r.status, r.stderr).toBe(1);
    expect(calls("drbd-peer-outdater")).toHaveLength(4);
    expect(fakes.sleeps()).toEqual([1, 1, 1]);
    expect(r.stderr).toContain("state unknown");
  });

  it("reports failure when Heartbeat does not answer", () => {
    fakes.install("cl_status", clStatus(fakes.dir, ""));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, 5));
    const r = fence();
    expect(r.status).toBe(1);
    expect(calls("drbd-peer-outdater")).toEqual([]);
  });

  it("refuses to run without drbdadm's environment", () => {
    fakes.install("cl_status", clStatus(fakes.dir, "dead"));
    const r = fakes.run("pypi-drbd", ["fence-peer"], { DRBD_RESOURCE });
    expect(r.status).toBe(1);
    expect(calls("cl_status")).toEqual([]);
  });
});

const DRBDADM = "/usr/lib/drbd/drbdadm-84";
const canRunDrbdadm = requireTools("fence handler under drbdadm 8.4", [DRBDADM, "unshare"]);

describe.skipIf(!canRunDrbdadm)("the rendered resource's handlers, run by drbdadm 8.4", () => {
  let fakes: FakeCloud;
  beforeEach(() => {
    fakes = fakeCloud("");
  });
  afterEach(() => fakes.cleanup());

  /** drbdadm with the rendered resource, the handler at a temporary path, on `home`. */
  function drbdadm(command: string): { status: number; stderr: string } {
    const handler = fakes.script("pypi-drbd");
    const conf = join(fakes.dir, "drbd.conf");
    const rendered = renderDrbdResource(t);
    expect(rendered).toContain(`"${drbdPaths.tool} ${command}"`);
    writeFileSync(
      conf,
      rendered
        .split("\n")
        .filter((l) => !l.startsWith("include "))
        .join("\n")
        .replaceAll(drbdPaths.tool, handler),
    );
    const [cmd, ...args] = isolatedArgv(
      { uts: true },
      `hostname ${home.name} && exec ${DRBDADM} -c ${conf} ${command} ${DRBD_RESOURCE}`,
    );
    const r = spawnSync(cmd as string, args, { encoding: "utf8", env: { PATH: fakes.path } });
    return { status: r.status ?? -1, stderr: r.stderr };
  }

  it("passes the peer's name to Heartbeat and dopd, and the handler's exit code back to DRBD", () => {
    fakes.install("cl_status", clStatus(fakes.dir, "active"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, 4));
    const r = drbdadm("fence-peer");
    expect(r.status, r.stderr).toBe(4);
    expect(readFileSync(join(fakes.dir, "cl_status.log"), "utf8").trim()).toBe(`nodestatus ${peer.name}`);
    expect(readFileSync(join(fakes.dir, "drbd-peer-outdater.log"), "utf8").trim()).toBe(
      `-t 5 -r ${DRBD_RESOURCE} -p ${peer.name}`,
    );
  });

  it("hands DRBD a non-contract code when a live peer cannot be outdated", () => {
    fakes.install("cl_status", clStatus(fakes.dir, "active"));
    fakes.install("drbd-peer-outdater", outdater(fakes.dir, 5));
    expect(drbdadm("fence-peer").status).toBe(1);
  });

  it("runs after-resync-target", () => {
    fakes.install("drbdadm", "#!/bin/sh\necho UpToDate/UpToDate\n");
    const r = drbdadm("after-resync-target");
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain("resync done, disk states UpToDate/UpToDate");
  });
});

const OUTDATER_BIN = "/usr/libexec/heartbeat/drbd-peer-outdater";
const DOPD_BIN = "/usr/libexec/heartbeat/dopd";

describe.skipIf(!requireTools("Debian's dopd", [OUTDATER_BIN, DOPD_BIN], false))(
  "Debian's dopd, as the handler reads it",
  () => {
    it("drbd-peer-outdater answers 5 (dead) when its own dopd is not there, so 5 alone proves nothing", () => {
      // Meaningful only where no dopd runs, as on a test machine.
      if (existsSync("/run/heartbeat/dopd/outdater")) return;
      const dir = mkdtempSync(join(tmpdir(), "pypi-outdater-"));
      try {
        const log = join(dir, "ha-log");
        const r = spawnSync(OUTDATER_BIN, ["-t", "1", "-r", DRBD_RESOURCE, "-p", peer.name], {
          encoding: "utf8",
          env: { HA_logfacility: "none", HA_logfile: log },
        });
        expect(r.status).toBe(5);
        expect(r.stderr).toBe("");
        expect(readFileSync(log, "utf8")).toContain("Could not connect to outdater channel");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("dopd outdates the peer with drbdadm", () => {
      expect(readFileSync(DOPD_BIN).toString("latin1")).toContain("drbdadm outdate");
    });
  },
);
