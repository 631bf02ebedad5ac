import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadLabTopology } from "../../lab/lib/config.js";
import { loadConfig } from "../../src/app/config.js";
import { DirectoryStore, S3Store, storeFor } from "../../src/app/copies.js";
import { projectRoot } from "../../src/project-files.js";
import { indexAppEnv } from "../../src/render/apache.js";
import {
  FILE_COPY_UNIT,
  fileCopyUnitFiles,
  indexScriptPath,
  renderFileCopyPath,
  renderFileCopyService,
  renderFileCopyTimer,
} from "../../src/render/systemd.js";
import type { Topology } from "../../src/topology.js";
import { requireTools } from "../support/tools.js";

const canVerify = requireTools("systemd-analyze verify of the copy units", ["systemd-analyze"], false);

import { topologyFor } from "../support/topologies.js";

const lines = (text: string): string[] => text.split("\n");
const lab = loadLabTopology(projectRoot());

describe.each<[string, Topology]>([
  ["staging", topologyFor("staging")],
  ["prod", topologyFor("prod")],
  ["lab", lab],
])("file copy units (%s)", (shape, t) => {
  const onAws = t.backup.fileCopies.startsWith("s3://");

  it("are the three units of one name, under /etc/systemd/system", () => {
    expect(FILE_COPY_UNIT).toBe("pypi-file-copy");
    expect(fileCopyUnitFiles(t)).toEqual([
      { path: "/etc/systemd/system/pypi-file-copy.service", content: renderFileCopyService(t) },
      { path: "/etc/systemd/system/pypi-file-copy.path", content: renderFileCopyPath(t) },
      { path: "/etc/systemd/system/pypi-file-copy.timer", content: renderFileCopyTimer(t) },
    ]);
  });

  it("runs copy-files as www-data with the app's environment, writing only where it must", () => {
    const l = lines(renderFileCopyService(t));
    expect(l).toContain("Type=oneshot");
    expect(l).toContain("User=www-data");
    expect(l).toContain("EnvironmentFile=/etc/pypi-index/env");
    expect(l).toContain(`ExecStart=${indexScriptPath} copy-files`);
    expect(l).toContain("NoNewPrivileges=yes");
    expect(l).toContain("ProtectSystem=strict");
    expect(l).toContain("PrivateTmp=yes");
    const writable = l.filter((x) => x.startsWith("ReadWritePaths="));
    expect(writable).toEqual([
      `ReadWritePaths="${t.storage.packageRoot}"`,
      // The lab's store is a directory the job writes; a bucket needs no path.
      ...(onAws ? [] : [`ReadWritePaths=-"${t.backup.fileCopies}"`]),
    ]);
    expect(l.filter((x) => x.startsWith("ExecStart="))).toHaveLength(1);
  });

  it("starts when a registration leaves the marker, and on a timer of fileCopyIntervalSeconds", () => {
    const path = lines(renderFileCopyPath(t));
    expect(path).toContain(`PathExists=${t.storage.packageRoot}/copy-queue/wanted`);
    expect(path).toContain("Unit=pypi-file-copy.service");
    expect(path).toContain("WantedBy=multi-user.target");
    const timer = lines(renderFileCopyTimer(t));
    const every = `${t.backup.fileCopyIntervalSeconds}s`;
    expect(timer).toContain(`OnBootSec=${every}`);
    expect(timer).toContain(`OnUnitInactiveSec=${every}`);
    expect(timer).toContain("Unit=pypi-file-copy.service");
    expect(timer).toContain("WantedBy=timers.target");
    const slower = { ...t, backup: { ...t.backup, fileCopyIntervalSeconds: 77 } };
    expect(lines(renderFileCopyTimer(slower))).toContain("OnUnitInactiveSec=77s");
  });

  it(`gives the app a store it accepts (${shape})`, () => {
    const env = Object.fromEntries(indexAppEnv(t));
    expect(env.PYPI_FILE_COPIES).toBe(t.backup.fileCopies);
    expect(env.AWS_DEFAULT_REGION).toBe(t.backend === "aws" ? t.region : undefined);
    const cfg = loadConfig(env);
    expect(cfg.fileCopies).toBe(t.backup.fileCopies);
    expect(storeFor(cfg.fileCopies)).toBeInstanceOf(onAws ? S3Store : DirectoryStore);
  });

  it.runIf(canVerify)("passes systemd-analyze verify", () => {
    const dir = mkdtempSync(join(tmpdir(), "file-copy-units-"));
    try {
      // verify requires ExecStart= to exist: a stand-in at another path, everything else as rendered.
      const script = join(dir, "index.fcgi");
      writeFileSync(script, "#!/bin/sh\n");
      chmodSync(script, 0o755);
      const files = fileCopyUnitFiles(t).map(({ path, content }) => {
        const file = join(dir, basename(path));
        writeFileSync(file, content.replace(`ExecStart=${indexScriptPath} `, `ExecStart=${script} `));
        return file;
      });
      const r = spawnSync("systemd-analyze", ["verify", "--man=no", ...files], { encoding: "utf8" });
      const ours = r.stderr
        .split("\n")
        .filter((x) => x.includes(FILE_COPY_UNIT))
        .join("\n");
      expect(ours).toBe("");
      expect(r.status, r.stderr).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// The check above reads verify's complaints about these units; one must be seen when there is one.
it.runIf(canVerify)("systemd-analyze verify reports a broken copy unit", () => {
  const dir = mkdtempSync(join(tmpdir(), "file-copy-units-"));
  try {
    const file = join(dir, `${FILE_COPY_UNIT}.timer`);
    writeFileSync(file, renderFileCopyTimer(lab).replace("OnUnitInactiveSec=", "OnUnitInactiveSecs="));
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", file], { encoding: "utf8" });
    expect(r.stderr).toMatch(new RegExp(`${FILE_COPY_UNIT}\\.timer:\\d+: Unknown key`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
