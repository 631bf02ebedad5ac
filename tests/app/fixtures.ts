import { execFileSync } from "node:child_process";

/** A minimal but real wheel (metadata, WHEEL, RECORD), built with Python's zipfile. */
export function makeWheel(path: string, name: string, version: string, payload = "x = 1\n"): void {
  const script = `
import base64, hashlib, sys, zipfile
path, name, version = sys.argv[1:4]
payload = sys.stdin.read()
dist = name.replace("-", "_")
info = f"{dist}-{version}.dist-info"
files = {
    f"{dist}/__init__.py": payload,
    f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\nRequires-Python: >=3.8\\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
}
record = []
for n, c in files.items():
    d = base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{n},sha256={d},{len(c.encode())}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\\n".join(record) + "\\n"
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for n, c in files.items():
        z.writestr(n, c)
`;
  execFileSync("python3", ["-c", script, path, name, version], { input: payload });
}

/** A minimal sdist (`<name>-<version>.tar.gz` with PKG-INFO), built with Python's tarfile. */
export function makeSdist(path: string, name: string, version: string): void {
  const script = `
import io, sys, tarfile
path, name, version = sys.argv[1:4]
base = f"{name.replace('-', '_')}-{version}"
with tarfile.open(path, "w:gz") as t:
    data = f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n".encode()
    info = tarfile.TarInfo(f"{base}/PKG-INFO")
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
`;
  execFileSync("python3", ["-c", script, path, name, version]);
}
