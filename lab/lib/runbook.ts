/**
 * Executes a runbook's steps exactly as buildRunbooks renders them, each on its host's lab node
 * with `sh -c`. A step passes when it exits 0 and, if it names one, its output matches
 * `expectOutput`. Steps for the operator (AWS console, pulumi) are skipped; the lab's client is
 * not an operator workstation.
 */
import { buildRunbooks, OPERATOR, type Runbook, type RunbookStep } from "../../src/runbooks/runbooks.js";
import type { Topology } from "../../src/topology.js";
import type { LabNode } from "./lab-node.js";

export interface ExecutedStep {
  readonly step: RunbookStep;
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Epoch milliseconds. */
  readonly startedAt: number;
  readonly seconds: number;
}

export interface RunbookRun {
  readonly runbook: Runbook;
  readonly executed: ExecutedStep[];
  readonly skipped: RunbookStep[];
  readonly startedAt: number;
  readonly endedAt: number;
  /** Why the run stopped early; undefined when every step passed. */
  readonly failure?: string;
}

export interface RunbookOptions {
  /** Which steps to run. @default every step whose host is not OPERATOR */
  readonly include?: (step: RunbookStep) => boolean;
  /** Per step. @default 120 s */
  readonly stepTimeoutMs?: number;
  /** Variables the operator sets before the runbook (e.g. a point-in-time target). @default none */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * The lab's stand-in for an operator step that is a cloud API call (modify-volume, a secret's
   * new value): it does the equivalent and resolves with what it did, or undefined for a step it
   * does not stand in for (skipped). @default every operator step is skipped
   */
  readonly operator?: (step: RunbookStep) => Promise<string | undefined>;
}

/** Why a step's result does not satisfy it, or undefined when it does. */
export function stepFailure(
  step: RunbookStep,
  status: number,
  stdout: string,
  stderr: string,
): string | undefined {
  if (status !== 0) return `"${step.title}" on ${step.host} exited ${status}: ${stderr}${stdout}`.trim();
  if (step.expectOutput !== undefined && !new RegExp(step.expectOutput).test(stdout))
    return `"${step.title}" on ${step.host}: output does not match /${step.expectOutput}/: ${stdout}${stderr}`.trim();
  return undefined;
}

/** Run the steps in order; stops at the first failing step (recorded in `failure`). Never throws. */
export async function executeRunbook(
  runbook: Runbook,
  nodeOf: (host: string) => LabNode,
  opts: RunbookOptions = {},
): Promise<RunbookRun> {
  const include = opts.include ?? ((s: RunbookStep) => s.host !== OPERATOR);
  const executed: ExecutedStep[] = [];
  const skipped: RunbookStep[] = [];
  const startedAt = Date.now();
  let failure: string | undefined;
  for (const step of runbook.steps) {
    if (step.host === OPERATOR && opts.operator) {
      const began = Date.now();
      let did: string | undefined;
      try {
        did = await opts.operator(step);
      } catch (err) {
        failure = `"${step.title}" (the lab's stand-in): ${err instanceof Error ? err.message : String(err)}`;
        executed.push({
          step,
          status: -1,
          stdout: "",
          stderr: failure,
          startedAt: began,
          seconds: (Date.now() - began) / 1000,
        });
        break;
      }
      if (did !== undefined) {
        executed.push({
          step,
          status: 0,
          stdout: did,
          stderr: "",
          startedAt: began,
          seconds: (Date.now() - began) / 1000,
        });
        continue;
      }
    }
    if (!include(step)) {
      skipped.push(step);
      continue;
    }
    const began = Date.now();
    let r: { status: number; stdout: string; stderr: string };
    try {
      r = await nodeOf(step.host).execAsync(["sh", "-c", step.command], {
        timeoutMs: opts.stepTimeoutMs ?? 120_000,
        ...(opts.env ? { env: opts.env } : {}),
      });
    } catch (err) {
      r = { status: -1, stdout: "", stderr: err instanceof Error ? err.message : String(err) };
    }
    executed.push({ step, ...r, startedAt: began, seconds: (Date.now() - began) / 1000 });
    failure = stepFailure(step, r.status, r.stdout, r.stderr);
    if (failure) break;
  }
  return { runbook, executed, skipped, startedAt, endedAt: Date.now(), ...(failure ? { failure } : {}) };
}

/** One line per executed step: seconds, host, command. */
export function describeRun(run: RunbookRun): string[] {
  return run.executed.map(
    (e) =>
      `${e.seconds.toFixed(2)} s  ${e.step.host}: ${e.step.command}${e.status === 0 ? "" : ` (exit ${e.status})`}`,
  );
}

/** The step of a runbook whose command ends with `suffix` (e.g. "db-sync off"). */
export function stepByCommand(runbook: Runbook, suffix: string): RunbookStep {
  const step = runbook.steps.find((s) => s.command.endsWith(suffix));
  if (!step) throw new Error(`runbook ${runbook.id} has no step ending in "${suffix}"`);
  return step;
}

/** The stack's runbook `id` for this lab topology. */
export function runbookById(lab: { readonly t: Topology }, id: string): Runbook {
  const rb = buildRunbooks(lab.t).find((r) => r.id === id);
  if (!rb) throw new Error(`no runbook ${id}`);
  return rb;
}
