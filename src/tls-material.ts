/**
 * Preview-time checks of the balancers' TLS material (secret config `pypi-infra:tlsCertificate` and
 * `pypi-infra:tlsKey`), so a bad chain or key fails `pulumi preview` instead of nginx at boot.
 *
 * Pure: no Pulumi, no I/O. Messages never quote key material or certificate text; they describe
 * what the text looks like. Certificate subjects, DNS names and dates are public and may be quoted.
 */
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from "node:crypto";
import { PROJECT } from "./schema.js";

export const TLS_CERTIFICATE_CONFIG_KEY = `${PROJECT}:tlsCertificate`;
export const TLS_KEY_CONFIG_KEY = `${PROJECT}:tlsKey`;

export interface TlsLimits {
  readonly certificateBytes: number;
  readonly keyBytes: number;
}

/** SSM SecureString value limits: the certificate is on the Advanced tier, the key on Standard. */
export const DEFAULT_TLS_LIMITS: TlsLimits = { certificateBytes: 8192, keyBytes: 4096 };

/** The leaf must have at least this long left, so a renewal failure shows up before clients see it. */
export const MIN_DAYS_LEFT = 14;

export interface TlsMaterialInput {
  readonly certificatePem: string;
  readonly keyPem: string;
  readonly domain: string;
  readonly now: Date;
  readonly limits?: TlsLimits;
}

const C = TLS_CERTIFICATE_CONFIG_KEY;
const K = TLS_KEY_CONFIG_KEY;
const DAY_MS = 86_400_000;
const ALLOWED_KEYS = "allowed: RSA of at least 2048 bits, EC P-256 or P-384, Ed25519";
const WANT_KEY = "supply one unencrypted PEM private key (PKCS#8, RSA or EC)";
const WANT_CHAIN = "supply the PEM certificate chain: CERTIFICATE blocks, leaf first, then its intermediates";

// ---------------------------------------------------------------------------------------------
// PEM scanning and description

interface PemBlock {
  readonly label: string;
  readonly text: string;
  readonly body: string;
}

interface PemScan {
  readonly blocks: readonly PemBlock[];
  /** Labels of BEGIN lines without their END line. */
  readonly truncated: readonly string[];
  /** UTF-8 bytes of non-whitespace text outside the blocks. */
  readonly strayBytes: number;
}

// The body may not contain "-----", so a BEGIN without its END never swallows the next block.
const BLOCK = /-----BEGIN ([A-Z0-9][A-Z0-9 ]{0,63})-----((?:(?!-----)[\s\S])*)-----END \1-----/g;
const BEGIN = /-----BEGIN ([A-Z0-9][A-Z0-9 ]{0,63})-----/;

const utf8Bytes = (s: string): number => Buffer.byteLength(s, "utf8");

function scanPem(text: string): PemScan {
  const blocks: PemBlock[] = [];
  const truncated: string[] = [];
  let strayBytes = 0;
  const between = (segment: string): void => {
    const begin = BEGIN.exec(segment);
    strayBytes += utf8Bytes((begin ? segment.slice(0, begin.index) : segment).trim());
    if (begin?.[1]) truncated.push(begin[1]);
  };
  let last = 0;
  for (const m of text.matchAll(BLOCK)) {
    between(text.slice(last, m.index));
    blocks.push({ label: m[1] ?? "", text: m[0], body: m[2] ?? "" });
    last = m.index + m[0].length;
  }
  between(text.slice(last));
  return { blocks, truncated, strayBytes };
}

type Category = "certificate" | "private-key" | "encrypted-key" | "openssh-key" | "ec-parameters" | "other";

const PRIVATE_KEY_LABELS = new Set(["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY"]);

function categorize(b: PemBlock): Category {
  if (b.label === "CERTIFICATE") return "certificate";
  if (b.label === "ENCRYPTED PRIVATE KEY") return "encrypted-key";
  // Traditional (PKCS#1/SEC1) keys mark encryption with a header inside the block.
  if (PRIVATE_KEY_LABELS.has(b.label))
    return /Proc-Type:\s*4,ENCRYPTED/.test(b.body) ? "encrypted-key" : "private-key";
  if (b.label === "OPENSSH PRIVATE KEY") return "openssh-key";
  if (b.label === "EC PARAMETERS") return "ec-parameters";
  return "other";
}

const isKeyish = (b: PemBlock): boolean => {
  const c = categorize(b);
  return c === "private-key" || c === "encrypted-key" || c === "openssh-key";
};

/** [singular with article, plural without count] */
const LABEL_NAMES: Record<string, readonly [string, string]> = {
  CERTIFICATE: ["a PEM certificate", "PEM certificates"],
  "X509 CERTIFICATE": ["a PEM certificate", "PEM certificates"],
  "TRUSTED CERTIFICATE": ["an OpenSSL trusted certificate", "OpenSSL trusted certificates"],
  "PUBLIC KEY": ["a PEM public key", "PEM public keys"],
  "RSA PUBLIC KEY": ["a PEM public key", "PEM public keys"],
  "CERTIFICATE REQUEST": ["a PEM certificate signing request", "PEM certificate signing requests"],
  "NEW CERTIFICATE REQUEST": ["a PEM certificate signing request", "PEM certificate signing requests"],
  "X509 CRL": ["a PEM CRL", "PEM CRLs"],
  PKCS7: ["a PEM PKCS#7 bundle", "PEM PKCS#7 bundles"],
  "EC PARAMETERS": ["PEM EC parameters", "PEM EC parameter blocks"],
  "DH PARAMETERS": ["PEM DH parameters", "PEM DH parameter blocks"],
  "OPENSSH PRIVATE KEY": ["an OpenSSH private key", "OpenSSH private keys"],
  "PGP PRIVATE KEY BLOCK": ["an OpenPGP private key", "OpenPGP private keys"],
  "PGP PUBLIC KEY BLOCK": ["an OpenPGP public key", "OpenPGP public keys"],
  "PGP MESSAGE": ["an OpenPGP message", "OpenPGP messages"],
};

function names(b: PemBlock): readonly [string, string] {
  switch (categorize(b)) {
    case "private-key":
      return ["a PEM private key", "PEM private keys"];
    case "encrypted-key":
      return ["an encrypted PEM private key", "encrypted PEM private keys"];
    default:
      return LABEL_NAMES[b.label] ?? [`a PEM "${b.label}" block`, `PEM "${b.label}" blocks`];
  }
}

const nameOf = (b: PemBlock): string => names(b)[0];
const bare = (phrase: string): string => phrase.replace(/^an? /, "");

const formatNumber = (n: number): string => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
const formatBytes = (n: number): string => `${formatNumber(n)} byte${n === 1 ? "" : "s"}`;

function joinList(parts: readonly string[]): string {
  if (parts.length <= 1) return parts[0] ?? "";
  return `${parts.slice(0, -1).join(", ")} and ${parts[parts.length - 1]}`;
}

const SSH_PUBLIC_KEY =
  /^(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,2}(?:\s|$)/;

/**
 * What a pasted secret looks like, without quoting any of it: for error messages about text that
 * may hold key material ("a PEM private key", "2 PEM certificates and a PEM private key",
 * "an OpenSSH public key", "42 bytes of non-PEM text").
 */
export function describeSecretText(text: string): string {
  if (text === "") return "empty text";
  if (text.trim() === "") return `${formatBytes(utf8Bytes(text))} of whitespace`;
  const scan = scanPem(text);
  if (scan.blocks.length === 0 && scan.truncated.length === 0) {
    const trimmed = text.trim();
    if (SSH_PUBLIC_KEY.test(trimmed)) return "an OpenSSH public key";
    if (/^PuTTY-User-Key-File-\d+:/.test(trimmed)) return "a PuTTY private key";
    return `${formatBytes(utf8Bytes(text))} of non-PEM text`;
  }
  const counts = new Map<string, { names: readonly [string, string]; n: number }>();
  for (const b of scan.blocks) {
    const [one, many] = names(b);
    const entry = counts.get(one) ?? { names: [one, many], n: 0 };
    entry.n += 1;
    counts.set(one, entry);
  }
  const parts = [...counts.values()].map(({ names: [one, many], n }) => (n === 1 ? one : `${n} ${many}`));
  for (const label of scan.truncated)
    parts.push(`a truncated ${bare(nameOf({ label, text: "", body: "" }))}`);
  const stray = scan.strayBytes > 0 ? `, plus ${formatBytes(scan.strayBytes)} of non-PEM text` : "";
  return `${joinList(parts)}${stray}`;
}

/** Why a block that looks like PEM may still fail to parse, without quoting it. */
const escapeHint = (b: PemBlock): string =>
  b.body.includes("\\n")
    ? " (its line breaks are literal \\n escapes, not newlines)"
    : " (corrupt or cut short?)";

// ---------------------------------------------------------------------------------------------
// Certificates

function certName(c: X509Certificate): string {
  const lines = c.subject.split("\n").filter((l) => l !== "");
  const cn = lines.find((l) => l.startsWith("CN="));
  return cn ?? (lines.length > 0 ? lines.join(", ") : "an empty subject");
}

const at = (certs: readonly (X509Certificate | undefined)[], i: number): string => {
  const c = certs[i];
  return `certificate ${i + 1}${c ? ` (${certName(c)})` : ""}`;
};

function issues(parent: X509Certificate, child: X509Certificate): boolean {
  try {
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false;
  }
}

const selfSigned = (c: X509Certificate): boolean => issues(c, c);

const formatDate = (d: Date): string => `${d.toISOString().slice(0, 19).replace("T", " ")} UTC`;

/** SAN DNS names, or undefined when the certificate has no DNS names in subjectAltName. */
function dnsNames(c: X509Certificate): string[] | undefined {
  const san = c.subjectAltName;
  if (san === undefined) return undefined;
  const out: string[] = [];
  // Node quotes (JSON-style) names holding separators, so a comma inside a name cannot split it.
  for (const m of san.matchAll(/(?:^|, )DNS:("(?:[^"\\]|\\.)*"|[^,]*)/g)) {
    const raw = m[1] ?? "";
    try {
      out.push(raw.startsWith('"') ? (JSON.parse(raw) as string) : raw);
    } catch {
      // An undecodable name cannot match; skip it.
    }
  }
  return out.length > 0 ? out : undefined;
}

const normalizeHost = (h: string): string => h.trim().toLowerCase().replace(/\.$/, "");

/** RFC 6125 matching: a wildcard is only a whole leftmost label and covers exactly one label. */
export function dnsNameCovers(pattern: string, domain: string): boolean {
  const p = normalizeHost(pattern);
  const d = normalizeHost(domain);
  if (p === "" || d === "") return false;
  if (!p.startsWith("*.")) return !p.includes("*") && p === d;
  const suffix = p.slice(1);
  if (suffix.includes("*") || suffix.split(".").length < 3) return false;
  const label = d.slice(0, -suffix.length);
  return d.endsWith(suffix) && label !== "" && !label.includes(".");
}

function checkDomain(leaf: X509Certificate, leafName: string, domain: string): string[] {
  const sans = dnsNames(leaf);
  const cn = certName(leaf).startsWith("CN=") ? certName(leaf).slice(3) : undefined;
  if (sans === undefined) {
    if (cn !== undefined && dnsNameCovers(cn, domain)) return [];
    return [
      `${C}: ${leafName} does not cover ${domain}: it has no DNS names in subjectAltName, so its subject CN is used, and ${
        cn === undefined ? "it has no CN" : `CN ${cn} does not match`
      }; supply a certificate whose subjectAltName lists ${domain} (or a matching single-label wildcard)`,
    ];
  }
  if (sans.some((n) => dnsNameCovers(n, domain))) return [];
  const shown =
    sans.length > 10 ? `${sans.slice(0, 10).join(", ")} and ${sans.length - 10} more` : sans.join(", ");
  const wildcard = sans.some((n) => n.startsWith("*."))
    ? "; a wildcard covers exactly one leftmost label (*.example.org covers pypi.example.org, not a.b.example.org or example.org)"
    : "";
  const cnNote =
    cn !== undefined && dnsNameCovers(cn, domain)
      ? `; its subject CN ${cn} is not used because the certificate has subjectAltName DNS names`
      : "";
  return [
    `${C}: ${leafName} does not cover ${domain}: its subjectAltName DNS names are ${shown}${wildcard}${cnNote}`,
  ];
}

function checkValidity(leaf: X509Certificate, leafName: string, now: Date): string[] {
  const from = new Date(leaf.validFrom);
  const to = new Date(leaf.validTo);
  if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime()))
    return [`${C}: ${leafName} has validity dates that cannot be read`];
  if (now < from)
    return [
      `${C}: ${leafName} is not valid until ${formatDate(from)}; supply a certificate that is valid now`,
    ];
  if (now >= to)
    return [
      `${C}: ${leafName} expired on ${formatDate(to)}; supply a current certificate with at least ${MIN_DAYS_LEFT} days left`,
    ];
  const left = to.getTime() - now.getTime();
  if (left < MIN_DAYS_LEFT * DAY_MS) {
    const days = Math.floor(left / DAY_MS);
    const when = days === 0 ? "in less than a day" : `in ${days} day${days === 1 ? "" : "s"}`;
    return [
      `${C}: ${leafName} expires on ${formatDate(to)}, ${when}; renew it first: at least ${MIN_DAYS_LEFT} days must be left`,
    ];
  }
  return [];
}

function checkChainOrder(certs: readonly X509Certificate[]): string[] {
  const problems: string[] = [];
  for (let i = 0; i + 1 < certs.length; i++) {
    const child = certs[i];
    const parent = certs[i + 1];
    if (!child || !parent || issues(parent, child)) continue;
    if (selfSigned(child)) {
      problems.push(
        `${C}: ${at(certs, i)} is a self-signed root, so it can only come last, but ${at(certs, i + 1)} follows it; order the chain leaf first, then each issuer`,
      );
      continue;
    }
    const j = certs.findIndex((c, k) => k !== i && issues(c, child));
    if (j >= 0) {
      problems.push(
        `${C}: ${at(certs, i)} is issued by ${at(certs, j)}, not by ${at(certs, i + 1)}: the chain is out of order; order it leaf first, then each issuer`,
      );
    } else if (child.issuer === parent.subject) {
      // Same name, other key: a reissued or look-alike CA certificate.
      problems.push(
        `${C}: ${at(certs, i)} names ${at(certs, i + 1)} as its issuer, but was not signed with that certificate's key: the chain does not verify (a different CA certificate with the same name?)`,
      );
    } else {
      const issuer =
        child.issuer.split("\n").find((l) => l.startsWith("CN=")) ?? child.issuer.replace(/\n/g, ", ");
      problems.push(
        `${C}: ${at(certs, i)} is not issued by ${at(certs, i + 1)} (its issuer is ${issuer}): the chain does not verify; each certificate must be followed by the one that issued it`,
      );
    }
  }
  return problems;
}

interface CertResult {
  readonly problems: string[];
  /** Parsed certificates in order; undefined where a block does not parse. */
  readonly certs: (X509Certificate | undefined)[];
}

function checkCertificates(raw: string, scan: PemScan, domain: string, now: Date): CertResult {
  if (raw.trim() === "") return { problems: [`${C}: is empty; ${WANT_CHAIN}`], certs: [] };
  const problems: string[] = [];
  const certBlocks = scan.blocks.filter((b) => categorize(b) === "certificate");
  if (certBlocks.length === 0) {
    const keyNote = scan.blocks.some(isKeyish) ? ` (a private key belongs in ${K}, never here)` : "";
    return {
      problems: [
        `${C}: holds no PEM certificate; it looks like ${describeSecretText(raw)}${keyNote}; ${WANT_CHAIN}`,
      ],
      certs: [],
    };
  }
  scan.blocks.forEach((b, i) => {
    if (categorize(b) === "certificate") return;
    const where = `PEM block ${i + 1} of ${scan.blocks.length}`;
    problems.push(
      isKeyish(b)
        ? `${C}: ${where} is ${nameOf(b)}; remove it: the private key belongs in ${K}, and only CERTIFICATE blocks are allowed here`
        : `${C}: ${where} is ${nameOf(b)}; only CERTIFICATE blocks are allowed`,
    );
  });
  for (const label of scan.truncated)
    problems.push(
      `${C}: has a truncated ${bare(nameOf({ label, text: "", body: "" }))} (a BEGIN line without its END line); paste the whole chain`,
    );
  if (scan.strayBytes > 0)
    problems.push(
      `${C}: has ${formatBytes(scan.strayBytes)} of non-PEM text outside its PEM blocks; only CERTIFICATE blocks and whitespace are allowed`,
    );

  const certs = certBlocks.map((b, i) => {
    try {
      return new X509Certificate(b.text);
    } catch {
      problems.push(
        `${C}: certificate ${i + 1} of ${certBlocks.length} does not parse as X.509${escapeHint(b)}; ${WANT_CHAIN}`,
      );
      return undefined;
    }
  });

  const leaf = certs[0];
  if (leaf) {
    const leafName = `the leaf certificate (${certName(leaf)})`;
    if (leaf.ca)
      problems.push(
        `${C}: ${leafName} is a CA certificate, not a server certificate; the leaf for the domain must come first`,
      );
    problems.push(...checkValidity(leaf, leafName, now));
    problems.push(...checkDomain(leaf, leafName, domain));
  }
  const parsed = certs.filter((c): c is X509Certificate => c !== undefined);
  if (parsed.length === certs.length) problems.push(...checkChainOrder(parsed));
  return { problems, certs };
}

// ---------------------------------------------------------------------------------------------
// Private key

const CURVES: Record<string, string> = { prime256v1: "P-256", secp384r1: "P-384", secp521r1: "P-521" };
const KEY_TYPES: Record<string, string> = {
  dsa: "a DSA key",
  dh: "a DH key",
  "rsa-pss": "an RSA-PSS key",
  ed448: "an Ed448 key",
  x25519: "an X25519 key",
  x448: "an X448 key",
};

/** "an RSA 2048-bit key", "an EC P-256 key": the kind of key, never its value. */
function keyKind(k: KeyObject): string {
  const d = k.asymmetricKeyDetails ?? {};
  switch (k.asymmetricKeyType) {
    case "rsa":
      return `an RSA ${d.modulusLength ?? "?"}-bit key`;
    case "ec":
      return `an EC ${CURVES[d.namedCurve ?? ""] ?? d.namedCurve ?? "unknown-curve"} key`;
    case "ed25519":
      return "an Ed25519 key";
    default:
      return KEY_TYPES[k.asymmetricKeyType ?? ""] ?? `a key of type ${k.asymmetricKeyType ?? "unknown"}`;
  }
}

function keyStrength(k: KeyObject): string | undefined {
  const d = k.asymmetricKeyDetails ?? {};
  switch (k.asymmetricKeyType) {
    case "rsa":
      return (d.modulusLength ?? 0) >= 2048
        ? undefined
        : `${K}: is ${keyKind(k)}; RSA keys must be at least 2048 bits (${ALLOWED_KEYS})`;
    case "ec":
      return d.namedCurve === "prime256v1" || d.namedCurve === "secp384r1"
        ? undefined
        : `${K}: is ${keyKind(k)}; ${ALLOWED_KEYS}`;
    case "ed25519":
      return undefined;
    default:
      return `${K}: is ${keyKind(k)}; ${ALLOWED_KEYS}`;
  }
}

interface KeyResult {
  readonly problems: string[];
  readonly key?: KeyObject;
}

function checkKey(raw: string, scan: PemScan): KeyResult {
  if (raw.trim() === "") return { problems: [`${K}: is empty; ${WANT_KEY}`] };
  const keys = scan.blocks.filter(isKeyish);
  if (keys.length === 0)
    return { problems: [`${K}: looks like ${describeSecretText(raw)}, not a private key; ${WANT_KEY}`] };
  if (keys.length > 1)
    return {
      problems: [`${K}: holds ${keys.length} private keys (${describeSecretText(raw)}); supply exactly one`],
    };

  const problems: string[] = [];
  scan.blocks.forEach((b, i) => {
    // `openssl ecparam -genkey` writes EC PARAMETERS before the key; nginx skips them.
    if (isKeyish(b) || categorize(b) === "ec-parameters") return;
    problems.push(
      `${K}: also holds ${nameOf(b)} (PEM block ${i + 1} of ${scan.blocks.length}); supply only the private key`,
    );
  });
  for (const label of scan.truncated)
    problems.push(
      `${K}: also holds a truncated ${bare(nameOf({ label, text: "", body: "" }))} (a BEGIN line without its END line)`,
    );
  if (scan.strayBytes > 0)
    problems.push(
      `${K}: has ${formatBytes(scan.strayBytes)} of non-PEM text outside its PEM block; only the private key block and whitespace are allowed`,
    );

  const block = keys[0];
  if (!block) return { problems };
  switch (categorize(block)) {
    case "encrypted-key":
      problems.push(
        `${K}: is an encrypted private key; supply it unencrypted (nginx cannot prompt for a passphrase): openssl pkey -in key.pem -out plain.pem`,
      );
      return { problems };
    case "openssh-key":
      problems.push(
        `${K}: is an OpenSSH private key; nginx reads PEM keys only: convert a copy with ssh-keygen -p -m PKCS8 -f <copy>`,
      );
      return { problems };
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: block.text, format: "pem" });
  } catch {
    problems.push(`${K}: ${nameOf(block)} does not parse${escapeHint(block)}; ${WANT_KEY}`);
    return { problems };
  }
  const weak = keyStrength(key);
  if (weak) problems.push(weak);
  return { problems, key };
}

function matches(cert: X509Certificate, key: KeyObject): boolean {
  try {
    return cert.checkPrivateKey(key);
  } catch {
    // Some key types are refused outright by checkPrivateKey; compare the public halves instead.
    try {
      return createPublicKey(key).equals(cert.publicKey);
    } catch {
      return false;
    }
  }
}

function checkMatch(certs: readonly (X509Certificate | undefined)[], key: KeyObject): string[] {
  const leaf = certs[0];
  if (!leaf || matches(leaf, key)) return [];
  const kind = keyKind(key);
  const certKind = keyKind(leaf.publicKey);
  const other = certs.findIndex((c, i) => i > 0 && c !== undefined && matches(c, key));
  const detail =
    other > 0
      ? `; it is the key of ${at(certs, other)} instead (is the chain out of order?)`
      : kind === certKind
        ? `: both are ${kind}, but different keys; supply the key the leaf was issued for`
        : `: the key is ${kind}, the certificate's public key is ${certKind}`;
  return [`${K}: does not match the leaf certificate (${certName(leaf)})${detail}`];
}

// ---------------------------------------------------------------------------------------------
// Sizes

function tierName(limit: number): string {
  if (limit === 8192) return "the SSM Advanced tier holds";
  if (limit === 4096) return "the SSM Standard tier holds";
  return "its SSM parameter holds at most";
}

function checkSize(configKey: string, text: string, limit: number, hint: string): string[] {
  const n = utf8Bytes(text);
  if (n <= limit) return [];
  return [`${configKey}: is ${formatBytes(n)}; ${tierName(limit)} ${formatNumber(limit)}${hint}`];
}

// ---------------------------------------------------------------------------------------------

/**
 * Problems with the TLS chain and key, each starting with the config key it is about; empty when
 * nginx can serve `domain` with them at `now`.
 */
export function checkTlsMaterial(input: TlsMaterialInput): string[] {
  const limits = input.limits ?? DEFAULT_TLS_LIMITS;
  const certScan = scanPem(input.certificatePem);
  const keyScan = scanPem(input.keyPem);
  const problems: string[] = [];
  let certs: readonly (X509Certificate | undefined)[] = [];

  const certHasCerts = certScan.blocks.some((b) => categorize(b) === "certificate");
  const keyHasKeys = keyScan.blocks.some(isKeyish);
  if (
    !certHasCerts &&
    certScan.blocks.some(isKeyish) &&
    !keyHasKeys &&
    keyScan.blocks.some((b) => categorize(b) === "certificate")
  ) {
    problems.push(
      `${C}: holds ${describeSecretText(input.certificatePem)}, not certificates: ${C} and ${K} look swapped; the chain goes in ${C}, the private key in ${K}`,
      `${K}: holds ${describeSecretText(input.keyPem)}, not a private key: ${C} and ${K} look swapped`,
    );
  } else {
    const chain = checkCertificates(input.certificatePem, certScan, input.domain, input.now);
    const key = checkKey(input.keyPem, keyScan);
    problems.push(...chain.problems, ...key.problems);
    if (key.key) problems.push(...checkMatch(chain.certs, key.key));
    certs = chain.certs;
  }

  const rootIndex = certs.findIndex((c, i) => i > 0 && c !== undefined && selfSigned(c));
  const certHint =
    rootIndex > 0
      ? `; drop the self-signed root (certificate ${rootIndex + 1}): clients already have it`
      : "; supply only the leaf and its intermediates";
  problems.push(...checkSize(C, input.certificatePem, limits.certificateBytes, certHint));
  problems.push(
    ...checkSize(K, input.keyPem, limits.keyBytes, "; an RSA key of up to 4096 bits or an EC key fits"),
  );
  return problems;
}
