/**
 * The lab's secret store: what SSM holds on AWS, generated fresh for every run. The agent's lab
 * backend reads `$PYPI_SECRETS_DIR/<parameter>`. Besides the secrets proper it holds what the
 * client needs: the lab CA, the upload user's key pair and the host key as known_hosts.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Topology } from "../../src/topology.js";
import { writeTree } from "./lab-node.js";

export interface ClientMaterial {
  /** CA certificate the client trusts (pip --cert, curl --cacert). */
  readonly caPem: string;
  /** Private key of the upload user. */
  readonly uploadKey: string;
  /** Its public key line, which goes into the topology. */
  readonly uploadPublicKey: string;
  /** known_hosts for every floating IP, from the shared upload host key. */
  readonly knownHosts: string;
}

const run = (cmd: string, args: readonly string[]): void => {
  execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"], timeout: 30_000 });
};

/** An ed25519 key pair as [private, public line]. */
function sshKeyPair(dir: string, name: string, comment: string): [string, string] {
  const path = join(dir, name);
  rmSync(path, { force: true });
  rmSync(`${path}.pub`, { force: true });
  run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path]);
  return [readFileSync(path, "utf8"), readFileSync(`${path}.pub`, "utf8").trim()];
}

/** A lab CA and a server certificate for the domain and every floating IP: [chain, key]. */
function tlsCertificates(dir: string, t: Topology): { ca: string; chain: string; key: string } {
  const p = (f: string) => join(dir, f);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  run("openssl", [
    "req",
    "-x509",
    ...ec,
    "-days",
    "365",
    "-subj",
    "/CN=pypi lab CA",
    "-keyout",
    p("ca.key"),
    "-out",
    p("ca.pem"),
  ]);
  run("openssl", [
    "req",
    "-new",
    ...ec,
    "-subj",
    `/CN=${t.domain}`,
    "-keyout",
    p("server.key"),
    "-out",
    p("server.csr"),
  ]);
  const san = [`DNS:${t.domain}`, ...t.floatingIps.map((f) => `IP:${f.address}`)].join(",");
  writeFileSync(
    p("server.ext"),
    // Shaped like a public CA's certificate (90 days, a CRL location inside the lab's own domain),
    // so the TLS scan judges nginx's configuration rather than the lab CA's shortcuts.
    [
      `subjectAltName=${san}`,
      "extendedKeyUsage=serverAuth",
      "basicConstraints=CA:FALSE",
      "keyUsage=digitalSignature",
      `crlDistributionPoints=URI:http://${t.domain}/lab-ca.crl`,
      "",
    ].join("\n"),
  );
  run("openssl", [
    "x509",
    "-req",
    "-in",
    p("server.csr"),
    "-CA",
    p("ca.pem"),
    "-CAkey",
    p("ca.key"),
    "-CAcreateserial",
    "-days",
    "90",
    "-extfile",
    p("server.ext"),
    "-out",
    p("server.pem"),
  ]);
  const read = (f: string) => readFileSync(p(f), "utf8").trim();
  return { ca: read("ca.pem"), chain: read("server.pem"), key: read("server.key") };
}

const token = (bytes: number): string => randomBytes(bytes).toString("hex");

/** The upload user's key pair, made first: its public key goes into the topology the bundles come from. */
export function generateUploadKey(workDir: string): { privateKey: string; publicKey: string } {
  mkdirSync(workDir, { recursive: true, mode: 0o700 });
  const [privateKey, publicKey] = sshKeyPair(workDir, "upload_key", "lab-upload-user");
  return { privateKey, publicKey };
}

/**
 * Every secret of the topology into `secretsDir` (wiped first), under its parameter name, plus
 * the lab CA and server certificate; returns what the client needs.
 */
export function writeSecretStore(secretsDir: string, workDir: string, t: Topology): ClientMaterial {
  rmSync(secretsDir, { recursive: true, force: true });
  mkdirSync(secretsDir, { recursive: true, mode: 0o700 });
  mkdirSync(workDir, { recursive: true, mode: 0o700 });
  const tls = tlsCertificates(workDir, t);
  const [hostKey, hostPub] = sshKeyPair(workDir, "upload_host_key", "pypi-lab-upload");
  const s = t.secrets;
  writeTree(
    secretsDir,
    new Map([
      [s.balancerAuthkey.parameter, token(24)],
      [s.storageAuthkey.parameter, token(24)],
      [s.postgresReplicationPassword.parameter, `r:${token(12)}`],
      [s.postgresAppPassword.parameter, token(16)],
      [s.tlsKey.parameter, tls.key],
      [s.tlsCertificate.parameter, tls.chain],
      [s.uploadHostKey.parameter, hostKey.trim()],
      [s.drbdSecret.parameter, token(16)],
    ]),
  );
  const uploadKeyPath = join(workDir, "upload_key");
  chmodSync(uploadKeyPath, 0o600);
  const hostKeyLine = hostPub.split(" ").slice(0, 2).join(" ");
  return {
    caPem: `${tls.ca}\n`,
    uploadKey: readFileSync(uploadKeyPath, "utf8"),
    uploadPublicKey: readFileSync(`${uploadKeyPath}.pub`, "utf8").trim(),
    knownHosts: `${t.floatingIps.map((f) => `${f.address} ${hostKeyLine}`).join("\n")}\n`,
  };
}
