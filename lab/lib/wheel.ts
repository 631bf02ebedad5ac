/** A tiny but valid wheel (METADATA, WHEEL, RECORD with hashes), built with Python's zipfile. */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

export interface Wheel {
  readonly name: string;
  readonly version: string;
  readonly filename: string;
  readonly path: string;
  readonly sha256: string;
}

const BUILD = String.raw`
import base64, hashlib, os, sys, zipfile
name, version, out, payload = sys.argv[1:5]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f'__version__ = "{version}"\n',
    **({f"{name}/payload.bin": os.urandom(int(payload)).hex()[: int(payload)]} if int(payload) else {}),
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: pypi lab probe\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: pypi-lab\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{p},{digest(c.encode())},{len(c.encode())}\n" for p, c in files.items()) + f"{dist}/RECORD,,\n"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for p, c in files.items():
        z.writestr(p, c)
    z.writestr(f"{dist}/RECORD", record)
`;

/** `payloadBytes`: a member of random hex text of that size (about half of it survives deflate). */
export function buildWheel(dir: string, name: string, version: string, payloadBytes = 0): Wheel {
  const filename = `${name}-${version}-py3-none-any.whl`;
  const path = join(dir, filename);
  execFileSync("/usr/bin/python3", ["-c", BUILD, name, version, path, String(payloadBytes)], {
    timeout: 30_000,
  });
  const sha256 = createHash("sha256").update(readFileSync(path)).digest("hex");
  return { name, version, filename, path, sha256 };
}

/**
 * Hostile wheels, built with Python's zipfile so they are what a real attacker's tools make:
 * `bomb` (one member of zeros that inflates about 1,000-fold), `mismatch` (METADATA names
 * another project and version), `slip` (a member path climbing out of the install dir).
 */
export type HostileKind = "bomb" | "mismatch" | "slip";

export function writeHostileWheel(path: string, kind: HostileKind, name: string, version: string): void {
  const script = `
import sys, zipfile
path, kind, name, version = sys.argv[1:5]
dist = name.replace("-", "_")
info = f"{dist}-{version}.dist-info"
meta_name, meta_version = ("requests", "99.0") if kind == "mismatch" else (name, version)
files = {
    f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {meta_name}\\nVersion: {meta_version}\\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    f"{info}/RECORD": "",
}
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for n, c in files.items():
        z.writestr(n, c)
    if kind == "bomb":
        z.writestr(f"{dist}/zeros.bin", b"\\0" * (63 * 1024 * 1024))
    if kind == "slip":
        z.writestr("../../../../tmp/pwned.py", "print('pwned')\\n")
`;
  execFileSync("/usr/bin/python3", ["-c", script, path, kind, name, version], { timeout: 30_000 });
}

/**
 * Debian 12's own pip (23.0), as the nodes' users have it: no cache, no version check, one
 * distribution and no dependencies. `install` puts it under `into` (--target), `download` there (-d).
 */
export function pipArgv(
  verb: "install" | "download",
  o: {
    readonly indexUrl: string;
    readonly cert?: string;
    readonly into: string;
    readonly spec: string;
    /** Wheels only, never an sdist. */
    readonly onlyBinary?: boolean;
  },
): string[] {
  return [
    "/usr/bin/python3",
    "-m",
    "pip",
    verb,
    "--no-deps",
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--timeout",
    "10",
    "--index-url",
    o.indexUrl,
    ...(o.cert ? ["--cert", o.cert] : []),
    ...(o.onlyBinary ? ["--only-binary=:all:"] : []),
    verb === "install" ? "--target" : "-d",
    o.into,
    o.spec,
  ];
}
