import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  checkTlsMaterial,
  DEFAULT_TLS_LIMITS,
  describeSecretText,
  dnsNameCovers,
  type TlsMaterialInput,
} from "../src/tls-material.js";

const CERT = "pypi-infra:tlsCertificate";
const KEY = "pypi-infra:tlsKey";
const DOMAIN = "pypi.example.org";
// Every fixture has explicit dates around this instant, so results do not depend on the clock.
const NOW = new Date("2030-06-01T00:00:00Z");

const CA_CNF = `[ ca ]
default_ca = CA_default
[ CA_default ]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
`;

let dir = "";
const f: Record<string, string> = {};

const openssl = (...args: string[]): void => {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
};
const read = (name: string): string => readFileSync(join(dir, name), "utf8");

function key(name: string, ...opts: string[]): void {
  openssl("genpkey", ...opts, "-out", `${name}.key`);
  f[`${name}.key`] = read(`${name}.key`);
}

/** Signs `name` with `issuer` (or itself) over [start, end], with the given extension lines. */
function cert(
  name: string,
  o: { key: string; cn: string; issuer?: string; dates: [string, string]; ext: string },
) {
  writeFileSync(join(dir, `${name}.ext`), `[ ext ]\n${o.ext}\n`);
  openssl(
    "req",
    "-new",
    "-config",
    "ca.cnf",
    "-key",
    `${o.key}.key`,
    "-subj",
    `/CN=${o.cn}`,
    "-out",
    `${name}.csr`,
  );
  const signer = o.issuer
    ? ["-cert", `${o.issuer}.pem`, "-keyfile", `${o.issuer}.key`]
    : ["-selfsign", "-keyfile", `${o.key}.key`];
  openssl(
    "ca",
    "-batch",
    "-notext",
    "-config",
    "ca.cnf",
    ...signer,
    "-in",
    `${name}.csr`,
    "-out",
    `${name}.pem`,
    "-extfile",
    `${name}.ext`,
    "-extensions",
    "ext",
    "-startdate",
    o.dates[0],
    "-enddate",
    o.dates[1],
  );
  f[`${name}.pem`] = read(`${name}.pem`);
}

const CA_EXT = "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign";
const leafExt = (...dns: string[]): string =>
  `basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth${
    dns.length > 0 ? `\nsubjectAltName = ${dns.map((d) => `DNS:${d}`).join(", ")}` : ""
  }`;
const CA_DATES: [string, string] = ["20290101000000Z", "20450101000000Z"];
const LEAF_DATES: [string, string] = ["20300101000000Z", "20310101000000Z"];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "tls-material-"));
  writeFileSync(join(dir, "ca.cnf"), CA_CNF);
  writeFileSync(join(dir, "index.txt"), "");
  writeFileSync(join(dir, "serial"), "01\n");

  key("root", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256");
  key("inter", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384");
  key("impostor", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256");
  key("leaf", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048");
  key("ed", "-algorithm", "ED25519");
  key("unrelated", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256");
  key("rsa1024", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024");
  key("p521", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521");
  key("x25519", "-algorithm", "X25519");
  // `ecparam -genkey` writes EC PARAMETERS before a SEC1 key, as many how-tos produce.
  openssl("ecparam", "-name", "prime256v1", "-genkey", "-out", "wild.key");
  f["wild.key"] = read("wild.key");
  openssl("pkey", "-in", "leaf.key", "-aes256", "-passout", "pass:fixture", "-out", "encrypted.key");
  f["encrypted.key"] = read("encrypted.key");
  openssl(
    "rsa",
    "-in",
    "leaf.key",
    "-aes128",
    "-passout",
    "pass:fixture",
    "-traditional",
    "-out",
    "legacy-enc.key",
  );
  f["legacy-enc.key"] = read("legacy-enc.key");
  openssl("rsa", "-in", "leaf.key", "-traditional", "-out", "leaf-pkcs1.key");
  f["leaf-pkcs1.key"] = read("leaf-pkcs1.key");

  cert("root", { key: "root", cn: "Test Root", dates: CA_DATES, ext: CA_EXT });
  cert("inter", { key: "inter", cn: "Test Intermediate", issuer: "root", dates: CA_DATES, ext: CA_EXT });
  cert("impostor", {
    key: "impostor",
    cn: "Test Intermediate",
    issuer: "root",
    dates: CA_DATES,
    ext: CA_EXT,
  });
  cert("other", { key: "impostor", cn: "Other Intermediate", issuer: "root", dates: CA_DATES, ext: CA_EXT });
  const leaf = { key: "leaf", cn: DOMAIN, issuer: "inter", dates: LEAF_DATES };
  cert("leaf", { ...leaf, ext: leafExt(DOMAIN, "www.example.org") });
  cert("wild", { ...leaf, key: "wild", cn: "*.example.org", ext: leafExt("*.example.org") });
  cert("ed", { ...leaf, key: "ed", ext: leafExt(DOMAIN) });
  cert("expired", { ...leaf, dates: ["20200101000000Z", "20210101000000Z"], ext: leafExt(DOMAIN) });
  cert("expiring", { ...leaf, dates: ["20300101000000Z", "20300611000000Z"], ext: leafExt(DOMAIN) });
  cert("future", { ...leaf, dates: ["20300701000000Z", "20310701000000Z"], ext: leafExt(DOMAIN) });
  cert("cn-only", { ...leaf, ext: leafExt() });
  cert("cn-only-other", { ...leaf, cn: "other.example.org", ext: leafExt() });
  cert("cn-not-san", { ...leaf, ext: leafExt("www.example.org") });
}, 60_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const chain = (...names: string[]): string => names.map((n) => f[`${n}.pem`]!).join("");

// A synthetic OpenSSH key: only its armor matters, and the body line must never be echoed.
const OPENSSH_KEY =
  "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBzeW50aGV0aWNmaXh0dXJlbm90YXJlYWxrZXlhdGFsbDAwMDAwMAAAAJg=\n-----END OPENSSH PRIVATE KEY-----\n";

/** Base64 lines of every PEM fixture (the first is skipped: its DER prefix is shared by many keys). */
function secretLines(): string[] {
  const lines: string[] = [];
  for (const pem of [...Object.values(f), OPENSSH_KEY])
    for (const block of pem.matchAll(/-----BEGIN [A-Z0-9 ]+-----\n([\s\S]*?)-----END/g))
      lines.push(
        ...block[1]!
          .split("\n")
          .filter((l) => /^[A-Za-z0-9+/=]{40,}$/.test(l))
          .slice(1),
      );
  return lines;
}

/** Every message names its config key and quotes no PEM body of any fixture, whatever the input. */
function expectClean(messages: readonly string[]): void {
  const lines = secretLines();
  expect(lines.length).toBeGreaterThan(50);
  for (const m of messages) {
    expect(m.startsWith(`${CERT}: `) || m.startsWith(`${KEY}: `), m).toBe(true);
    for (const line of lines) expect(m.includes(line), `message echoes a PEM line: ${m}`).toBe(false);
  }
}

function check(over: Partial<TlsMaterialInput> = {}): string[] {
  const out = checkTlsMaterial({
    certificatePem: chain("leaf", "inter"),
    keyPem: f["leaf.key"]!,
    domain: DOMAIN,
    now: NOW,
    ...over,
  });
  expectClean(out);
  return out;
}

const about = (messages: readonly string[], configKey: string): string[] =>
  messages.filter((m) => m.startsWith(`${configKey}: `));

describe("checkTlsMaterial: good material", () => {
  it("accepts a leaf and intermediate with its PKCS#8 RSA key", () => {
    expect(check()).toEqual([]);
  });

  it("accepts a full chain ending in the self-signed root", () => {
    expect(check({ certificatePem: chain("leaf", "inter", "root") })).toEqual([]);
  });

  it("accepts a traditional RSA key, CRLF line ends and surrounding whitespace", () => {
    expect(check({ keyPem: f["leaf-pkcs1.key"]! })).toEqual([]);
    const crlf = chain("leaf", "inter").replace(/\n/g, "\r\n");
    expect(check({ certificatePem: `\n\n${crlf}\n\n`, keyPem: `  ${f["leaf.key"]}\n` })).toEqual([]);
  });

  it("accepts a single-label wildcard and an `ecparam -genkey` SEC1 EC P-256 key", () => {
    expect(f["wild.key"]).toContain("BEGIN EC PARAMETERS");
    expect(check({ certificatePem: chain("wild", "inter"), keyPem: f["wild.key"]! })).toEqual([]);
  });

  it("accepts an Ed25519 leaf and key", () => {
    expect(check({ certificatePem: chain("ed", "inter"), keyPem: f["ed.key"]! })).toEqual([]);
  });

  it("matches the domain case-insensitively and ignores a trailing dot", () => {
    expect(check({ domain: "PyPI.Example.ORG." })).toEqual([]);
  });

  it("uses the subject CN when the leaf has no subjectAltName", () => {
    expect(check({ certificatePem: chain("cn-only", "inter") })).toEqual([]);
  });

  it("accepts a leaf with exactly the 14-day margin left", () => {
    const at = new Date(Date.parse("2030-06-11T00:00:00Z") - 14 * 86_400_000);
    expect(check({ certificatePem: chain("expiring", "inter"), now: at })).toEqual([]);
  });
});

describe("checkTlsMaterial: certificate text", () => {
  it("reports an empty certificate", () => {
    const out = check({ certificatePem: "  \n" });
    expect(out).toEqual([expect.stringMatching(/^pypi-infra:tlsCertificate: is empty; supply the PEM/)]);
  });

  it("reports non-PEM text by size, without quoting it", () => {
    const out = check({ certificatePem: "not a certificate" });
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(
      /^pypi-infra:tlsCertificate: holds no PEM certificate; it looks like 17 bytes of non-PEM/,
    );
    expect(out[0]).not.toContain("not a certificate");
  });

  it("reports a private key pasted as the certificate, without echoing it", () => {
    const out = check({ certificatePem: f["unrelated.key"]! });
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(
      /^pypi-infra:tlsCertificate: holds no PEM certificate; it looks like a PEM private key/,
    );
    expect(out[0]).toContain(`belongs in ${KEY}`);
  });

  it("reports a private key appended to the chain by its block position", () => {
    const out = check({ certificatePem: chain("leaf", "inter") + f["leaf.key"] });
    expect(out).toEqual([
      expect.stringMatching(
        /^pypi-infra:tlsCertificate: PEM block 3 of 3 is a PEM private key; remove it: the private key belongs in pypi-infra:tlsKey/,
      ),
    ]);
  });

  it("reports other PEM blocks, truncated blocks and stray text", () => {
    const pub =
      "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
    expect(about(check({ certificatePem: chain("leaf", "inter") + pub }), CERT)).toEqual([
      expect.stringContaining("PEM block 3 of 3 is a PEM public key; only CERTIFICATE blocks are allowed"),
    ]);

    const cut = chain("leaf", "inter");
    const out = check({ certificatePem: cut.slice(0, cut.length - 200) });
    expect(out).toContainEqual(
      expect.stringMatching(/^pypi-infra:tlsCertificate: has a truncated PEM certificate/),
    );

    const stray = check({ certificatePem: `subject=CN = ${DOMAIN}\n${chain("leaf", "inter")}` });
    expect(stray).toEqual([
      `${CERT}: has 29 bytes of non-PEM text outside its PEM blocks; only CERTIFICATE blocks and whitespace are allowed`,
    ]);
  });

  it("reports a certificate block that does not parse, by position", () => {
    const junk = "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n";
    const out = check({ certificatePem: f["leaf.pem"] + junk });
    expect(out).toEqual([
      expect.stringMatching(/^pypi-infra:tlsCertificate: certificate 2 of 2 does not parse as X\.509/),
    ]);
  });

  it("names literal \\n escapes as the reason a block does not parse", () => {
    const escaped = f["leaf.pem"]!.replace(/\n/g, "\\n");
    // The escape after the END line is also reported, as stray text.
    expect(check({ certificatePem: escaped })).toEqual([
      `${CERT}: has 2 bytes of non-PEM text outside its PEM blocks; only CERTIFICATE blocks and whitespace are allowed`,
      expect.stringMatching(
        /^pypi-infra:tlsCertificate: certificate 1 of 1 does not parse as X\.509 \(its line breaks are literal \\n escapes/,
      ),
    ]);
  });

  it("names the two values as swapped when certificate and key are exchanged", () => {
    const out = check({ certificatePem: f["leaf.key"]!, keyPem: chain("leaf", "inter") });
    expect(out).toHaveLength(2);
    expect(about(out, CERT)[0]).toMatch(/holds a PEM private key, not certificates: .* look swapped/);
    expect(about(out, KEY)[0]).toMatch(/holds 2 PEM certificates, not a private key: .* look swapped/);
  });
});

describe("checkTlsMaterial: private key", () => {
  it("reports an empty key", () => {
    expect(check({ keyPem: "" })).toEqual([
      expect.stringMatching(/^pypi-infra:tlsKey: is empty; supply one/),
    ]);
  });

  it("reports a certificate pasted as the key", () => {
    const out = check({ keyPem: f["leaf.pem"]! });
    expect(out).toEqual([
      expect.stringMatching(
        /^pypi-infra:tlsKey: looks like a PEM certificate, not a private key; supply one/,
      ),
    ]);
  });

  it("reports non-PEM text and OpenSSH keys without echoing them", () => {
    const text = "hunter2-is-not-a-key";
    const out = check({ keyPem: text });
    expect(out).toEqual([
      `${KEY}: looks like 20 bytes of non-PEM text, not a private key; supply one unencrypted PEM private key (PKCS#8, RSA or EC)`,
    ]);
    expect(check({ keyPem: OPENSSH_KEY })).toEqual([
      expect.stringMatching(/^pypi-infra:tlsKey: is an OpenSSH private key; nginx reads PEM keys only/),
    ]);
    expect(check({ keyPem: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture user@host" })[0]).toMatch(
      /^pypi-infra:tlsKey: looks like an OpenSSH public key, not a private key/,
    );
  });

  it("reports PKCS#8 and traditional encrypted keys", () => {
    for (const name of ["encrypted.key", "legacy-enc.key"]) {
      const out = check({ keyPem: f[name]! });
      expect(out, name).toEqual([
        expect.stringMatching(/^pypi-infra:tlsKey: is an encrypted private key; supply it unencrypted/),
      ]);
    }
  });

  it("reports more than one private key", () => {
    const out = check({ keyPem: f["leaf.key"]! + f["unrelated.key"] });
    expect(out).toEqual([`${KEY}: holds 2 private keys (2 PEM private keys); supply exactly one`]);
  });

  it("reports a certificate bundled with the key", () => {
    const out = check({ keyPem: f["leaf.key"]! + f["leaf.pem"] });
    expect(out).toEqual([
      `${KEY}: also holds a PEM certificate (PEM block 2 of 2); supply only the private key`,
    ]);
  });

  it("reports a key that does not parse", () => {
    const lines = f["leaf.key"]!.split("\n");
    const corrupt = [...lines.slice(0, 3), ...lines.slice(-2)].join("\n");
    expect(check({ keyPem: corrupt })).toEqual([
      expect.stringMatching(
        /^pypi-infra:tlsKey: a PEM private key does not parse \(corrupt or cut short\?\)/,
      ),
    ]);
    expect(check({ keyPem: f["leaf.key"]!.replace(/\n/g, "\\n") })).toContainEqual(
      expect.stringMatching(
        /^pypi-infra:tlsKey: a PEM private key does not parse \(its line breaks are literal \\n escapes/,
      ),
    );
  });

  it("rejects RSA keys under 2048 bits", () => {
    const out = check({ keyPem: f["rsa1024.key"]! });
    expect(out).toContain(
      `${KEY}: is an RSA 1024-bit key; RSA keys must be at least 2048 bits (allowed: RSA of at least 2048 bits, EC P-256 or P-384, Ed25519)`,
    );
  });

  it("rejects EC curves other than P-256 and P-384, and other key types", () => {
    expect(check({ keyPem: f["p521.key"]! })).toContainEqual(
      expect.stringMatching(/^pypi-infra:tlsKey: is an EC P-521 key; allowed: .*EC P-256 or P-384/),
    );
    expect(check({ keyPem: f["x25519.key"]! })).toContainEqual(
      expect.stringMatching(/^pypi-infra:tlsKey: is an X25519 key; allowed: /),
    );
  });

  it("reports a key that does not match the leaf, naming both kinds", () => {
    expect(check({ keyPem: f["unrelated.key"]! })).toEqual([
      `${KEY}: does not match the leaf certificate (CN=${DOMAIN}): the key is an EC P-256 key, the certificate's public key is an RSA 2048-bit key`,
    ]);
    expect(check({ certificatePem: chain("wild", "inter"), keyPem: f["unrelated.key"]! })).toEqual([
      `${KEY}: does not match the leaf certificate (CN=*.example.org): both are an EC P-256 key, but different keys; supply the key the leaf was issued for`,
    ]);
  });
});

describe("checkTlsMaterial: domain", () => {
  it("lets a wildcard cover exactly one leftmost label", () => {
    const wild = { certificatePem: chain("wild", "inter"), keyPem: f["wild.key"]! };
    expect(check({ ...wild, domain: "files.example.org" })).toEqual([]);
    for (const domain of ["a.b.example.org", "example.org"]) {
      const out = check({ ...wild, domain });
      expect(out, domain).toEqual([
        expect.stringMatching(
          new RegExp(
            `^pypi-infra:tlsCertificate: the leaf certificate \\(CN=\\*\\.example\\.org\\) does not cover ${domain.replace(/\./g, "\\.")}: its subjectAltName DNS names are \\*\\.example\\.org; a wildcard covers exactly one leftmost label`,
          ),
        ),
      ]);
    }
  });

  it("lists the SAN names when the domain is not among them", () => {
    expect(check({ domain: "upload.example.org" })).toEqual([
      `${CERT}: the leaf certificate (CN=${DOMAIN}) does not cover upload.example.org: its subjectAltName DNS names are ${DOMAIN}, www.example.org`,
    ]);
  });

  it("says the CN is not used when the leaf has SAN names", () => {
    const out = check({ certificatePem: chain("cn-not-san", "inter") });
    expect(out).toEqual([
      `${CERT}: the leaf certificate (CN=${DOMAIN}) does not cover ${DOMAIN}: its subjectAltName DNS names are www.example.org; its subject CN ${DOMAIN} is not used because the certificate has subjectAltName DNS names`,
    ]);
  });

  it("says the CN was used when the leaf has no SAN", () => {
    const out = check({ certificatePem: chain("cn-only-other", "inter") });
    expect(out).toEqual([
      expect.stringMatching(
        /^pypi-infra:tlsCertificate: the leaf certificate \(CN=other\.example\.org\) does not cover pypi\.example\.org: it has no DNS names in subjectAltName, so its subject CN is used, and CN other\.example\.org does not match/,
      ),
    ]);
  });

  it("matches names by RFC 6125 rules", () => {
    expect(dnsNameCovers("*.example.org", "pypi.example.org")).toBe(true);
    expect(dnsNameCovers("*.example.org", "a.b.example.org")).toBe(false);
    expect(dnsNameCovers("*.example.org", "example.org")).toBe(false);
    expect(dnsNameCovers("*.org", "example.org")).toBe(false);
    expect(dnsNameCovers("py*.example.org", "pypi.example.org")).toBe(false);
    expect(dnsNameCovers("PYPI.example.org.", "pypi.EXAMPLE.org")).toBe(true);
  });
});

describe("checkTlsMaterial: chain order", () => {
  it("names positions when the chain is out of order", () => {
    const out = check({ certificatePem: chain("leaf", "root", "inter") });
    expect(out).toEqual([
      `${CERT}: certificate 1 (CN=${DOMAIN}) is issued by certificate 3 (CN=Test Intermediate), not by certificate 2 (CN=Test Root): the chain is out of order; order it leaf first, then each issuer`,
      `${CERT}: certificate 2 (CN=Test Root) is a self-signed root, so it can only come last, but certificate 3 (CN=Test Intermediate) follows it; order the chain leaf first, then each issuer`,
    ]);
  });

  it("reports an intermediate placed before the leaf", () => {
    const out = check({ certificatePem: chain("inter", "leaf") });
    expect(out).toContainEqual(
      `${CERT}: the leaf certificate (CN=Test Intermediate) is a CA certificate, not a server certificate; the leaf for the domain must come first`,
    );
    expect(out).toContainEqual(
      expect.stringMatching(
        /^pypi-infra:tlsCertificate: certificate 1 \(CN=Test Intermediate\) is not issued by certificate 2/,
      ),
    );
    expect(out).toContainEqual(
      expect.stringMatching(
        /^pypi-infra:tlsKey: does not match the leaf .*it is the key of certificate 2 \(CN=pypi\.example\.org\) instead/,
      ),
    );
  });

  it("reports a chain that does not verify: the wrong intermediate", () => {
    expect(check({ certificatePem: chain("leaf", "other") })).toEqual([
      `${CERT}: certificate 1 (CN=${DOMAIN}) is not issued by certificate 2 (CN=Other Intermediate) (its issuer is CN=Test Intermediate): the chain does not verify; each certificate must be followed by the one that issued it`,
    ]);
  });

  it("reports a chain whose issuer name matches but whose signature does not verify", () => {
    expect(check({ certificatePem: chain("leaf", "impostor") })).toEqual([
      expect.stringMatching(
        /^pypi-infra:tlsCertificate: certificate 1 \(CN=pypi\.example\.org\) names certificate 2 \(CN=Test Intermediate\) as its issuer, but was not signed with that certificate's key: the chain does not verify/,
      ),
    ]);
  });
});

describe("checkTlsMaterial: validity", () => {
  it("reports an expired leaf", () => {
    expect(check({ certificatePem: chain("expired", "inter") })).toEqual([
      `${CERT}: the leaf certificate (CN=${DOMAIN}) expired on 2021-01-01 00:00:00 UTC; supply a current certificate with at least 14 days left`,
    ]);
  });

  it("reports a leaf within 14 days of expiry", () => {
    expect(check({ certificatePem: chain("expiring", "inter") })).toEqual([
      `${CERT}: the leaf certificate (CN=${DOMAIN}) expires on 2030-06-11 00:00:00 UTC, in 10 days; renew it first: at least 14 days must be left`,
    ]);
  });

  it("reports a leaf that is not valid yet", () => {
    expect(check({ certificatePem: chain("future", "inter") })).toEqual([
      `${CERT}: the leaf certificate (CN=${DOMAIN}) is not valid until 2030-07-01 00:00:00 UTC; supply a certificate that is valid now`,
    ]);
  });
});

describe("checkTlsMaterial: SSM sizes", () => {
  it("defaults to the Advanced (8,192) and Standard (4,096) tier limits", () => {
    expect(DEFAULT_TLS_LIMITS).toEqual({ certificateBytes: 8192, keyBytes: 4096 });
    const full = chain("leaf", "inter", "root");
    const out = check({ certificatePem: full + "\n".repeat(9120 - full.length) });
    expect(out).toEqual([
      `${CERT}: is 9,120 bytes; the SSM Advanced tier holds 8,192; drop the self-signed root (certificate 3): clients already have it`,
    ]);
    expect(check({ certificatePem: full + "\n".repeat(8192 - full.length) })).toEqual([]);
  });

  it("counts UTF-8 bytes, not characters", () => {
    // U+3000 is whitespace to the PEM scan but three bytes in UTF-8.
    const keyPem = f["leaf.key"]! + "\u3000".repeat(1000);
    expect(keyPem.length).toBeLessThan(4096);
    const bytes = Buffer.byteLength(keyPem, "utf8");
    expect(check({ keyPem })).toEqual([
      `${KEY}: is ${bytes.toLocaleString("en-US")} bytes; the SSM Standard tier holds 4,096; an RSA key of up to 4096 bits or an EC key fits`,
    ]);
  });

  it("takes overridden limits", () => {
    const out = check({ limits: { certificateBytes: 1000, keyBytes: 500 } });
    expect(about(out, CERT)).toEqual([
      expect.stringMatching(
        /^pypi-infra:tlsCertificate: is [\d,]+ bytes; its SSM parameter holds at most 1,000; supply only/,
      ),
    ]);
    expect(about(out, KEY)).toEqual([
      expect.stringMatching(/^pypi-infra:tlsKey: is 1,\d{3} bytes; its SSM parameter holds at most 500;/),
    ]);
  });
});

describe("describeSecretText", () => {
  it("names what PEM text holds", () => {
    expect(describeSecretText(f["leaf.key"]!)).toBe("a PEM private key");
    expect(describeSecretText(f["leaf-pkcs1.key"]!)).toBe("a PEM private key");
    expect(describeSecretText(f["leaf.pem"]!)).toBe("a PEM certificate");
    expect(describeSecretText(chain("leaf", "inter") + f["leaf.key"])).toBe(
      "2 PEM certificates and a PEM private key",
    );
    expect(describeSecretText(f["encrypted.key"]!)).toBe("an encrypted PEM private key");
    expect(describeSecretText(f["legacy-enc.key"]!)).toBe("an encrypted PEM private key");
    expect(describeSecretText(f["wild.key"]!)).toBe("PEM EC parameters and a PEM private key");
    expect(describeSecretText(`junk\n${f["leaf.pem"]}`)).toBe(
      "a PEM certificate, plus 4 bytes of non-PEM text",
    );
    expect(describeSecretText(f["leaf.key"]!.slice(0, 200))).toBe("a truncated PEM private key");
  });

  it("names OpenSSH keys and sizes other text without quoting it", () => {
    expect(describeSecretText(OPENSSH_KEY)).toBe("an OpenSSH private key");
    expect(describeSecretText("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture user@host\n")).toBe(
      "an OpenSSH public key",
    );
    expect(describeSecretText("s3cr3t")).toBe("6 bytes of non-PEM text");
    expect(describeSecretText("ééé")).toBe("6 bytes of non-PEM text");
    expect(describeSecretText("")).toBe("empty text");
  });

  it("never echoes key material", () => {
    const outs = Object.values(f).map(describeSecretText);
    for (const out of outs) for (const line of secretLines()) expect(out.includes(line)).toBe(false);
  });
});
