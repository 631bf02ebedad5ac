/**
 * testssl.sh against the HTTPS endpoint on a floating IP, from the client namespace: the
 * security pass asks for no HIGH or CRITICAL finding. The certificate's only CRL location is
 * inside the lab's domain, and testssl.sh does not fetch it without --phone-out.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CLIENT_DIR, clientCommand, type Lab } from "../lib/lab.js";
import type { Report } from "../lib/report.js";

interface Finding {
  readonly id: string;
  readonly severity: string;
  readonly finding: string;
}

export async function runTlsScan(lab: Lab, report: Report): Promise<void> {
  const [fip] = lab.t.floatingIps;
  if (!fip) throw new Error("the lab topology has no floating IP");
  const jsonName = "testssl.json";
  await report.check("security", `testssl.sh on https://${lab.t.domain} via ${fip.address}`, async () => {
    const started = Date.now();
    const run = await lab.client.execAsync(
      clientCommand([
        "testssl",
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--nodns",
        "none",
        "--ip",
        fip.address,
        "--connect-timeout",
        "5",
        "--openssl-timeout",
        "5",
        // Trust the lab CA as a client of the lab would.
        "--add-ca",
        `${CLIENT_DIR}/ca.pem`,
        "--severity",
        "LOW",
        "--jsonfile",
        `${CLIENT_DIR}/${jsonName}`,
        `https://${lab.t.domain}/`,
      ]),
      { timeoutMs: 300_000 },
    );
    const findings = JSON.parse(readFileSync(join(lab.dirs.client, jsonName), "utf8")) as Finding[];
    const serious = findings.filter((f) => f.severity === "HIGH" || f.severity === "CRITICAL");
    const bySeverity = new Map<string, number>();
    for (const f of findings) bySeverity.set(f.severity, (bySeverity.get(f.severity) ?? 0) + 1);
    const seconds = (Date.now() - started) / 1000;
    report.figure("security", "testssl.sh scan time", Number(seconds.toFixed(1)), "s");
    if (findings.length === 0)
      throw new Error(`testssl.sh wrote no findings (exit ${run.status}): ${run.stderr}`);
    if (serious.length > 0) {
      throw new Error(`HIGH/CRITICAL: ${serious.map((f) => `${f.id} (${f.finding})`).join("; ")}`);
    }
    const counts = [...bySeverity.entries()].map(([s, n]) => `${s} ${n}`).join(", ");
    return `no HIGH or CRITICAL finding; at LOW and above: ${counts || "none"}`;
  });
}
