import { nodeByName, type Topology } from "../topology.js";
import { OPERATOR, type Runbook } from "./runbooks.js";

/** Markdown escaping for inline text; commands go in fenced blocks, which need none. */
export function mdText(text: string): string {
  return text.replace(/([\\`*_[\]<>|#])/g, "\\$1");
}

function hostLabel(t: Topology, host: string): string {
  if (host === OPERATOR) return "operator workstation";
  const node = nodeByName(t, host);
  const id = node.instanceId ? `, ${node.instanceId}` : "";
  return `${host} (${node.privateIp}${id})`;
}

function accessHint(t: Topology, host: string): string {
  if (host === OPERATOR || t.backend !== "aws") return "";
  const node = nodeByName(t, host);
  return node.instanceId ? `aws ssm start-session --region ${t.region} --target ${node.instanceId}\n` : "";
}

export function runbookMarkdown(t: Topology, runbook: Runbook): string {
  const lines = [`# ${mdText(runbook.title)}`, "", mdText(runbook.summary), ""];
  if (runbook.labLimitation) lines.push(`> Lab: ${mdText(runbook.labLimitation)}.`, "");
  runbook.steps.forEach((step, i) => {
    lines.push(`## ${i + 1}. ${mdText(step.title)}`, "", `On **${mdText(hostLabel(t, step.host))}**:`, "");
    lines.push(
      "```sh",
      `${accessHint(t, step.host)}${step.command}`,
      "```",
      "",
      `Expect: ${mdText(step.expect)}`,
      "",
    );
    if (step.fallback) {
      lines.push(
        `If ${mdText(step.host)} does not answer, on **${mdText(hostLabel(t, step.fallback.host))}**:`,
        "",
      );
      lines.push("```sh", step.fallback.command, "```", "");
    }
  });
  return `${lines.join("\n").trimEnd()}\n`;
}
