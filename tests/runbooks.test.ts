import { describe, expect, it } from "vitest";
import { runbookMarkdown } from "../src/runbooks/markdown.js";
import { buildRunbooks, OPERATOR, type Runbook } from "../src/runbooks/runbooks.js";
import type { Topology } from "../src/topology.js";
import { topologyFor } from "./support/topologies.js";

const withIds = (t: Topology): Topology => ({
  ...t,
  nodes: t.nodes.map((n, i) => ({
    ...n,
    instanceId: `i-0${i}abcdef`,
    urn: `urn:pulumi:${t.environment}::pypi-infra::aws:ec2/instance:Instance::${n.name}`,
  })),
});

const find = (books: Runbook[], id: string): Runbook => {
  const rb = books.find((b) => b.id === id);
  if (!rb) throw new Error(`no runbook ${id}; have ${books.map((b) => b.id).join(", ")}`);
  return rb;
};

describe("runbooks", () => {
  it("covers every failure the design names, for every node that can fail", () => {
    const ids = buildRunbooks(topologyFor("prod")).map((b) => b.id);
    for (const id of [
      "balancer-loss-lb-a",
      "balancer-loss-lb-b",
      "app-server-loss-app-c",
      "upload-backend-loss-app-b",
      "db-primary-loss-db-a",
      "db-primary-loss-db-b",
      "storage-primary-loss-app-a",
      "rebuild-db-a",
      "rebuild-lb-b",
      "db-pitr-db-a",
      "db-pitr-db-b",
      "db-both-lost",
      "package-files-lost",
    ]) {
      expect(ids).toContain(id);
    }
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("database primary loss: fence, promote, move the writer, verify, re-attach — in that order", () => {
    const t = topologyFor("prod");
    const steps = find(buildRunbooks(t), "db-primary-loss-db-a").steps;
    const commands = steps.map((s) => `${s.host}: ${s.command}`);
    const order = [
      "db-a: /usr/local/sbin/pypi-node db-fence",
      "db-b: /usr/local/sbin/pypi-node db-promote",
      "db-b: /usr/local/sbin/pypi-node db-sync off",
      `db-b: /usr/local/sbin/pypi-node overlay ${t.overlay.dbWriter} take`,
      "app-a: /usr/local/sbin/pypi-node db-writer-check",
      // Archiving continues from the promoted node, on its new timeline: checked, not assumed.
      "db-b: /usr/local/sbin/pypi-node db-archive-check",
      "db-a: /usr/local/sbin/pypi-node db-reattach",
      "db-b: /usr/local/sbin/pypi-node db-sync on",
    ];
    const positions = order.map((c) => commands.indexOf(c));
    expect(
      positions.every((p) => p >= 0),
      commands.join("\n"),
    ).toBe(true);
    expect([...positions].sort((a, b) => a - b)).toEqual(positions);
    expect(steps[0]?.fallback?.command).toContain("aws ec2 stop-instances");
  });

  it("the fence fallback stops the instance and waits for stopped before anything is promoted", () => {
    const t = withIds(topologyFor("prod"));
    const id = t.nodes.find((n) => n.name === "db-a")?.instanceId;
    const fence = find(buildRunbooks(t), "db-primary-loss-db-a").steps[0];
    expect(fence?.title).toBe("Fence db-a");
    const fallback = fence?.fallback;
    expect(fallback?.host).toBe(OPERATOR);
    // stop-instances alone returns at "stopping": the old primary may still take writes.
    expect(fallback?.command.split(" && ")).toEqual([
      `aws ec2 stop-instances --region ${t.region} --force --instance-ids ${id} --query 'StoppingInstances[].CurrentState.Name' --output text`,
      `aws ec2 wait instance-stopped --region ${t.region} --instance-ids ${id}`,
      `aws ec2 describe-instances --region ${t.region} --instance-ids ${id} --query 'Reservations[].Instances[].State.Name' --output text`,
    ]);
    const expected = new RegExp(fallback?.expectOutput ?? "^$");
    expect(expected.test("stopping\nstopped\n")).toBe(true);
    expect(expected.test("stopping\n")).toBe(false);
    expect(fallback?.expect).toMatch(/stopped/);
    expect(fence?.expect).toContain("stopped");
    const md = runbookMarkdown(t, find(buildRunbooks(t), "db-primary-loss-db-a"));
    expect(md).toContain(`aws ec2 wait instance-stopped --region ${t.region} --instance-ids ${id}`);
  });

  it("relaxes synchronous replication only when it is on", () => {
    const async = find(buildRunbooks(topologyFor("staging")), "db-primary-loss-db-a");
    expect(async.steps.some((s) => s.command.includes("db-sync"))).toBe(false);
  });

  it("every expectOutput is a valid regular expression and hosts are real nodes or the operator", () => {
    const t = topologyFor("prod");
    const names = new Set(t.nodes.map((n) => n.name));
    for (const rb of buildRunbooks(t)) {
      for (const step of rb.steps) {
        if (step.expectOutput) expect(() => new RegExp(step.expectOutput as string)).not.toThrow();
        expect(step.host === OPERATOR || names.has(step.host), `${rb.id}: ${step.host}`).toBe(true);
      }
    }
  });

  it("a check that waits for a state polls for it: no step guesses the time with a fixed sleep", () => {
    // `sleep 2; db-replication` failed when a re-attached standby replayed 100 MiB first.
    for (const env of ["prod", "staging"] as const) {
      for (const rb of buildRunbooks(topologyFor(env))) {
        for (const step of rb.steps) {
          for (const command of [step.command, step.fallback?.command ?? ""])
            expect(/(^|[;&|]\s*)sleep\s+\d/.test(command), `${rb.id}: ${step.title}: ${command}`).toBe(false);
        }
      }
    }
    const prod = buildRunbooks(topologyFor("prod"));
    expect(find(prod, "db-standby-lost-db-b").steps.map((s) => s.command)).toContain(
      "/usr/local/sbin/pypi-node db-replication --wait db-b",
    );
    expect(find(prod, "db-primary-loss-db-a").steps.map((s) => s.command)).toContain(
      "/usr/local/sbin/pypi-node db-replication --wait db-a",
    );
  });

  it("balancer loss checks every floating IP on the survivor and over HTTPS", () => {
    const t = topologyFor("prod");
    const rb = find(buildRunbooks(t), "balancer-loss-lb-a");
    for (const fip of t.floatingIps) {
      expect(rb.steps).toContainEqual(
        expect.objectContaining({
          host: "lb-b",
          command: `/usr/local/sbin/pypi-node fip ${fip.address} start`,
        }),
      );
      expect(
        rb.steps.some((s) => s.host === OPERATOR && s.command.includes(`${t.domain}:443:${fip.address}`)),
      ).toBe(true);
    }
    const status = rb.steps.find((s) => s.command.endsWith("pypi-node status"));
    const sample = t.floatingIps.map((f) => `fip\t${f.address}\trunning`).join("\n");
    expect(new RegExp(status?.expectOutput ?? "^$").test(sample)).toBe(true);
    expect(new RegExp(status?.expectOutput ?? "^$").test(`fip\t${t.floatingIps[0]?.address}\tstopped`)).toBe(
      false,
    );
  });

  it("markdown carries the real instance ids, addresses and SSM access", () => {
    const t = withIds(topologyFor("prod"));
    const rb = find(buildRunbooks(t), "db-primary-loss-db-a");
    const md = runbookMarkdown(t, rb);
    const dbA = t.nodes.find((n) => n.name === "db-a");
    expect(md).toContain(`db-a (${dbA?.privateIp}, ${dbA?.instanceId})`);
    expect(md).toContain(`aws ssm start-session --region us-east-1 --target ${dbA?.instanceId}`);
    expect(md).toContain(`--instance-ids ${dbA?.instanceId}`);
    expect(md).toContain(t.overlay.dbWriter);
    expect(md.startsWith("# Database primary db-a lost\n")).toBe(true);
    const rebuild = runbookMarkdown(t, find(buildRunbooks(t), "rebuild-app-b"));
    expect(rebuild).toContain("--replace 'urn:pulumi:prod::pypi-infra::aws:ec2/instance:Instance::app-b'");
  });

  it("point-in-time: archive on the primary, restore onto the peer's scratch server at the operator's moment", () => {
    const t = topologyFor("prod");
    const steps = find(buildRunbooks(t), "db-pitr-db-b").steps;
    expect(steps.map((s) => `${s.host}: ${s.command}`)).toEqual([
      "db-b: /usr/local/sbin/pypi-node db-archive-check",
      'db-a: /usr/local/sbin/pypi-node db-pitr "$PITR_TARGET"',
      'db-a: /usr/local/sbin/pypi-node db-scratch-sql "SELECT count(*) FROM files"',
      expect.stringMatching(/^db-a: runuser -u postgres -- pg_dump .* -p 5433 --data-only/),
      "db-a: /usr/local/sbin/pypi-node db-scratch-stop",
    ]);
  });

  it("both db nodes lost: the replacements restore by themselves; the steps verify and take a new full backup", () => {
    const t = withIds(topologyFor("prod"));
    const rb = find(buildRunbooks(t), "db-both-lost");
    expect(rb.steps[0]?.host).toBe(OPERATOR);
    expect(rb.steps[0]?.command).toContain(
      "--replace 'urn:pulumi:prod::pypi-infra::aws:ec2/instance:Instance::db-a'",
    );
    expect(rb.steps[0]?.command).toContain(
      "--replace 'urn:pulumi:prod::pypi-infra::aws:ec2/instance:Instance::db-b'",
    );
    expect(rb.steps.at(-1)).toMatchObject({
      host: "db-a",
      command: "/usr/local/sbin/pypi-node db-backup full",
    });
    const status = new RegExp(rb.steps[1]?.expectOutput ?? "^$");
    const out = (backup: string) =>
      [`writer\t${t.overlay.dbWriter}\trunning`, "postgres\tprimary", backup].join("\n");
    expect(status.test(out("backup\tnewest\t20261130-020000F\tfull\tage_s=3"))).toBe(true);
    // A repository without a backup fails the step.
    expect(status.test(out("backup\tnone\tmissing stanza path"))).toBe(false);
  });

  it("package files lost: restore what is missing, then check every file against its row", () => {
    const steps = find(buildRunbooks(topologyFor("prod")), "package-files-lost").steps;
    const restore = steps.filter((s) => s.command.includes("files-restore"));
    expect(restore.map((s) => s.command)).toEqual([
      "/usr/local/sbin/pypi-node files-restore",
      "/usr/local/sbin/pypi-node files-restore --all",
    ]);
    const ok = JSON.stringify({ checked: 2, restored: 2, alreadyGood: 0, mismatched: 0, missingInStore: 0 });
    const bad = JSON.stringify({ checked: 2, restored: 1, alreadyGood: 0, mismatched: 1, missingInStore: 0 });
    for (const s of restore) {
      expect(new RegExp(s.expectOutput ?? "^$").test(ok)).toBe(true);
      expect(new RegExp(s.expectOutput ?? "^$").test(bad)).toBe(false);
    }
  });

  it("says plainly which runbooks the lab cannot execute", () => {
    const rb = find(buildRunbooks(topologyFor("staging")), "storage-primary-loss-app-a");
    expect(rb.labLimitation).toMatch(/DRBD/);
    expect(runbookMarkdown(topologyFor("staging"), rb)).toContain("> Lab: the lab kernel has no DRBD module");
  });
});
