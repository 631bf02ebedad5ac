/**
 * PEP 440 versions with the semantics of pypa/packaging's `Version`: every spelling it accepts,
 * its normal form, `canonicalize_version` (the equality key for "1.0" vs "1.0.0") and its ordering.
 */

export interface Pep440Version {
  epoch: number;
  release: number[];
  pre: ["a" | "b" | "rc", number] | null;
  post: number | null;
  dev: number | null;
  /** Lowercased segments; all-digit segments are numbers. */
  local: (string | number)[] | null;
}

/** Numbers are bigints here: date-based segments (`1.0.dev20240101123456789`) exceed 2^53. */
interface Parsed {
  epoch: bigint;
  release: bigint[];
  pre: ["a" | "b" | "rc", bigint] | null;
  post: bigint | null;
  dev: bigint | null;
  local: (string | bigint)[] | null;
}

/** What Python's `str.isspace` accepts, which packaging strips around a version. */
const WS =
  "[\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*";

/**
 * packaging's VERSION_PATTERN. The `i` flag without `u` folds ASCII letters only, as packaging's
 * `(?a:...)` does: "1.0+\u0130" stays invalid.
 */
const VERSION_RE = new RegExp(
  [
    `^${WS}v?`,
    "(?:([0-9]+)!)?",
    "([0-9]+(?:\\.[0-9]+)*)",
    "(?:[-_.]?(alpha|a|beta|b|preview|pre|c|rc)[-_.]?([0-9]+)?)?",
    "(?:-([0-9]+)|[-_.]?(post|rev|r)[-_.]?([0-9]+)?)?",
    "(?:[-_.]?(dev)[-_.]?([0-9]+)?)?",
    `(?:\\+([a-z0-9]+(?:[-_.][a-z0-9]+)*))?${WS}$`,
  ].join(""),
  "i",
);

const PRE_LETTER: Readonly<Record<string, "a" | "b" | "rc">> = {
  a: "a",
  alpha: "a",
  b: "b",
  beta: "b",
  c: "rc",
  rc: "rc",
  pre: "rc",
  preview: "rc",
};

function parse(v: string): Parsed | null {
  const m = VERSION_RE.exec(v);
  if (!m) return null;
  const [, epoch, release, preL, preN, postN1, postL, postN2, devL, devN, local] = m;
  return {
    epoch: BigInt(epoch ?? 0),
    release: (release as string).split(".").map(BigInt),
    pre: preL ? [PRE_LETTER[preL.toLowerCase()] as "a" | "b" | "rc", BigInt(preN ?? 0)] : null,
    post: postN1 !== undefined ? BigInt(postN1) : postL ? BigInt(postN2 ?? 0) : null,
    dev: devL ? BigInt(devN ?? 0) : null,
    local: local
      ? local
          .toLowerCase()
          .split(/[-_.]/)
          .map((s) => (/^[0-9]+$/.test(s) ? BigInt(s) : s))
      : null,
  };
}

export function parseVersion(v: string): Pep440Version | null {
  const p = parse(v);
  if (!p) return null;
  return {
    epoch: Number(p.epoch),
    release: p.release.map(Number),
    pre: p.pre ? [p.pre[0], Number(p.pre[1])] : null,
    post: p.post === null ? null : Number(p.post),
    dev: p.dev === null ? null : Number(p.dev),
    local: p.local ? p.local.map((s) => (typeof s === "bigint" ? Number(s) : s)) : null,
  };
}

/** Release without trailing zeros; `keepOne` leaves "0" rather than nothing, as packaging prints it. */
function trimRelease(release: readonly bigint[], keepOne: boolean): readonly bigint[] {
  let n = release.length;
  while (n > (keepOne ? 1 : 0) && release[n - 1] === 0n) n--;
  return release.slice(0, n);
}

function render(p: Parsed, release: readonly bigint[]): string {
  return [
    p.epoch !== 0n ? `${p.epoch}!` : "",
    release.join("."),
    p.pre ? `${p.pre[0]}${p.pre[1]}` : "",
    p.post !== null ? `.post${p.post}` : "",
    p.dev !== null ? `.dev${p.dev}` : "",
    p.local ? `+${p.local.join(".")}` : "",
  ].join("");
}

export function normalizeVersion(v: string): string | null {
  const p = parse(v);
  return p && render(p, p.release);
}

export function versionKey(v: string): string | null {
  const p = parse(v);
  return p && render(p, trimRelease(p.release, true));
}

const sign = (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0);

function compareSeq<T>(a: readonly T[], b: readonly T[], cmp: (x: T, y: T) => number): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const c = cmp(a[i] as T, b[i] as T);
    if (c !== 0) return c;
  }
  return Math.sign(a.length - b.length);
}

const PRE_RANK = { a: 0, b: 1, rc: 2 } as const;

/** packaging's `_cmpkey` suffix: a dev-only release sorts before its pre-releases, a final after them. */
function suffix(p: Parsed): bigint[] {
  const pre: [bigint, bigint] =
    p.pre !== null
      ? [BigInt(PRE_RANK[p.pre[0]]), p.pre[1]]
      : p.post === null && p.dev !== null
        ? [-1n, 0n]
        : [3n, 0n];
  return [...pre, p.post === null ? 0n : 1n, p.post ?? 0n, p.dev === null ? 1n : 0n, p.dev ?? 0n];
}

/** Local segments: numbers beat strings, strings compare lexically, numbers numerically. */
function compareLocal(x: string | bigint, y: string | bigint): number {
  if (typeof x === "bigint" && typeof y === "bigint") return sign(x, y);
  if (typeof x === "bigint") return 1;
  if (typeof y === "bigint") return -1;
  return x < y ? -1 : x > y ? 1 : 0;
}

function compareParsed(a: Parsed, b: Parsed): number {
  return (
    sign(a.epoch, b.epoch) ||
    compareSeq(trimRelease(a.release, false), trimRelease(b.release, false), sign) ||
    compareSeq(suffix(a), suffix(b), sign) ||
    (a.local === null || b.local === null
      ? (a.local === null ? 0 : 1) - (b.local === null ? 0 : 1)
      : compareSeq(a.local, b.local, compareLocal))
  );
}

/** PEP 440 order; invalid versions sort before every valid one, and among themselves by string. */
export function compareVersions(a: string, b: string): number {
  const pa = parse(a);
  const pb = parse(b);
  if (pa && pb) return compareParsed(pa, pb);
  if (pa) return 1;
  if (pb) return -1;
  return a < b ? -1 : a > b ? 1 : 0;
}
