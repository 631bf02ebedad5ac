/**
 * The lab's report: checks (pass/fail with detail and duration), figures (numbers the drills
 * measure) and notes (what the lab does not prove). Printed as a table, written as JSON and
 * Markdown.
 */
import { writeFileSync } from "node:fs";

export interface CheckRecord {
  readonly section: string;
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
  readonly seconds: number;
}

export interface FigureRecord {
  readonly section: string;
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly detail?: string;
}

/** An alarm that fired in a drill: how long after the fault, and the runbook it names. */
export interface DetectionRecord {
  readonly drill: string;
  readonly alarm: string;
  readonly seconds: number;
  readonly runbook: string;
  /** The drill expects it (else: allowed, another view of the fault). */
  readonly expected: boolean;
}

export interface ReportData {
  readonly title: string;
  readonly startedAt: string;
  readonly environment: Record<string, string>;
  readonly checks: CheckRecord[];
  readonly figures: FigureRecord[];
  readonly notes: string[];
  readonly steps: StepRecord[];
  readonly detections: DetectionRecord[];
  readonly ok: boolean;
}

const oneLine = (text: string, max = 160): string => {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
};

/** A Markdown table with padded columns (the shape Markdown formatters settle on). */
function mdTable(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const widths = header.map((h, i) => Math.max(3, h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
}

/** A command the lab ran on a node to bring it up (see lab/lib/boot.ts). */
export interface StepRecord {
  readonly node: string;
  readonly phase: string;
  readonly argv: readonly string[];
  readonly seconds: number;
}

export class Report {
  readonly checks: CheckRecord[] = [];
  /** Bring-up commands per node: the AWS steps (user data, boot unit, rollout), nothing else. */
  readonly steps: StepRecord[] = [];
  readonly figures: FigureRecord[] = [];
  readonly detections: DetectionRecord[] = [];
  readonly notes: string[] = [];
  readonly environment: Record<string, string> = {};
  private readonly startedAt = new Date().toISOString();

  constructor(
    readonly title: string,
    private readonly log: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  ) {}

  get ok(): boolean {
    return this.checks.every((c) => c.ok);
  }

  /**
   * Run one check: it passes when `fn` resolves (its string is the detail) and fails when it
   * throws. Never throws itself, so later checks still run.
   */
  async check(section: string, name: string, fn: () => Promise<string> | string): Promise<boolean> {
    const start = Date.now();
    let ok = true;
    let detail: string;
    try {
      detail = await fn();
    } catch (err) {
      ok = false;
      detail = err instanceof Error ? err.message : String(err);
    }
    const record = { section, name, ok, detail, seconds: (Date.now() - start) / 1000 };
    this.checks.push(record);
    this.log(
      `${ok ? "PASS" : "FAIL"}  ${section} / ${name} (${record.seconds.toFixed(1)} s): ${oneLine(detail)}`,
    );
    return ok;
  }

  figure(section: string, name: string, value: number, unit: string, detail?: string): void {
    this.figures.push({ section, name, value, unit, ...(detail === undefined ? {} : { detail }) });
    this.log(`FIGURE ${section} / ${name}: ${value} ${unit}${detail ? ` (${detail})` : ""}`);
  }

  note(text: string): void {
    this.notes.push(text);
  }

  data(): ReportData {
    return {
      title: this.title,
      startedAt: this.startedAt,
      environment: this.environment,
      checks: this.checks,
      figures: this.figures,
      steps: this.steps,
      detections: this.detections,
      notes: this.notes,
      ok: this.ok,
    };
  }

  /** The terminal table: one row per check, then the figures. */
  table(): string {
    const rows = this.checks.map((c) => [
      c.ok ? "PASS" : "FAIL",
      c.section,
      c.name,
      `${c.seconds.toFixed(1)} s`,
    ]);
    const widths = [4, 0, 0, 0].map((min, i) => Math.max(min, ...rows.map((r) => (r[i] ?? "").length)));
    const line = (cells: readonly string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ");
    const figures = this.figures.map((f) => `  ${f.section} / ${f.name}: ${f.value} ${f.unit}`);
    const failed = this.checks.filter((c) => !c.ok);
    return [
      line(["", "section", "check", "time"]),
      ...rows.map(line),
      ...(figures.length ? ["", "figures:", ...figures] : []),
      "",
      `${this.checks.length - failed.length}/${this.checks.length} checks passed`,
      ...failed.map((c) => `FAILED ${c.section} / ${c.name}: ${oneLine(c.detail, 400)}`),
    ].join("\n");
  }

  markdown(): string {
    const esc = (s: string) => oneLine(s, 300).replace(/\|/g, "\\|");
    const env = Object.entries(this.environment).map(([k, v]) => `- ${k}: ${v}`);
    return [
      `# ${this.title}`,
      "",
      `Started ${this.startedAt}. Result: **${this.ok ? "all checks passed" : "FAILED"}**.`,
      "",
      ...env,
      "",
      "## Checks",
      "",
      ...mdTable(
        ["result", "section", "check", "time", "detail"],
        this.checks.map((c) => [
          c.ok ? "pass" : "**FAIL**",
          c.section,
          c.name,
          `${c.seconds.toFixed(1)} s`,
          esc(c.detail),
        ]),
      ),
      ...(this.figures.length
        ? [
            "",
            "## Figures",
            "",
            ...mdTable(
              ["section", "figure", "value", "detail"],
              this.figures.map((f) => [f.section, f.name, `${f.value} ${f.unit}`, esc(f.detail ?? "")]),
            ),
          ]
        : []),
      ...(this.detections.length
        ? [
            "",
            "## Alarm detection",
            "",
            "Seconds from each drill's fault to the alarm, as the lab's CloudWatch stand-in evaluated the nodes' published health with the stack's thresholds.",
            "",
            ...mdTable(
              ["drill", "alarm", "detected after", "runbook", "expected"],
              this.detections.map((d) => [
                d.drill,
                d.alarm,
                `${d.seconds} s`,
                d.runbook,
                d.expected ? "yes" : "also",
              ]),
            ),
          ]
        : []),
      ...(this.steps.length
        ? [
            "",
            "## Bring-up steps per node",
            "",
            "Each node ran only what it runs on AWS: its user data's `runcmd` as cloud-init runs it, the boot unit at a reboot, and the rollout's SSM command. Phase `packages` stands in for apt on a db node's first boot: Debian's postgresql postinst creates and starts the `main` cluster on the root disk, which the agent must stop and hide under the data volume.",
            "",
            ...mdTable(
              ["node", "phase", "command", "time"],
              this.steps.map((s) => [
                s.node,
                s.phase,
                `\`${s.argv.join(" ")}\``,
                `${s.seconds.toFixed(1)} s`,
              ]),
            ),
          ]
        : []),
      ...(this.notes.length
        ? ["", "## What the lab does not prove", "", ...this.notes.map((n) => `- ${n}`)]
        : []),
      "",
    ].join("\n");
  }

  write(jsonPath: string, mdPath: string): void {
    writeFileSync(jsonPath, `${JSON.stringify(this.data(), null, 2)}\n`);
    writeFileSync(mdPath, this.markdown());
  }
}
