/**
 * Real TLS material for tests and the stack bench: a root CA, an intermediate and a leaf made by
 * the openssl CLI, so the stack's preview checks parse and verify the chain as they would in prod.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TlsChain {
  /** Leaf first, then the intermediate: what `tlsCertificate` holds. */
  readonly chain: string;
  readonly leaf: string;
  readonly intermediate: string;
  readonly root: string;
  /** The leaf's PKCS#8 private key. */
  readonly key: string;
}

const openssl = (dir: string, args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });

/** A chain for `domain` whose leaf is valid for `days` days from now. */
export function makeTlsChain(domain: string, days = 90): TlsChain {
  const dir = mkdtempSync(join(tmpdir(), "pypi-tls-"));
  try {
    const ext = (name: string, text: string) => writeFileSync(join(dir, name), text);
    ext("ca.ext", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
    ext(
      "leaf.ext",
      `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:${domain}\n`,
    );
    const key = (name: string) =>
      openssl(dir, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name]);
    key("root.key");
    key("int.key");
    key("leaf.key");
    openssl(dir, [
      "req",
      "-x509",
      "-new",
      "-key",
      "root.key",
      "-subj",
      "/CN=pypi-infra test root",
      "-days",
      "3650",
      "-out",
      "root.pem",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    const sign = (name: string, subject: string, issuer: string, extFile: string, validDays: number) => {
      openssl(dir, ["req", "-new", "-key", `${name}.key`, "-subj", subject, "-out", `${name}.csr`]);
      openssl(dir, [
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        `${issuer}.pem`,
        "-CAkey",
        `${issuer}.key`,
        "-CAcreateserial",
        "-days",
        String(validDays),
        "-extfile",
        extFile,
        "-out",
        `${name}.pem`,
      ]);
    };
    sign("int", "/CN=pypi-infra test intermediate", "root", "ca.ext", 3650);
    sign("leaf", `/CN=${domain}`, "int", "leaf.ext", days);
    const read = (name: string) => readFileSync(join(dir, name), "utf8");
    return {
      chain: read("leaf.pem") + read("int.pem"),
      leaf: read("leaf.pem"),
      intermediate: read("int.pem"),
      root: read("root.pem"),
      key: read("leaf.key"),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
