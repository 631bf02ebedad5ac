/**
 * The route broker: the only principal that may move an overlay route. EC2 has no IAM condition
 * key for a route's destination, so whoever holds ec2:ReplaceRoute on a table may rewrite any
 * route in it; the broker holds it instead of the nodes and narrows it to one destination and an
 * allow-list of interfaces. One function per overlay address (writer, storage); a node invokes
 * its own with `{"networkInterfaceId": "eni-..."}`.
 *
 * Runs on Lambda (nodejs20.x) as one ESM file (routeBrokerCode in src/components/route-broker.ts).
 * It imports nothing: `handler` loads the runtime's own SDK v3, so the logic is testable with a
 * fake client and the project carries no SDK dependency.
 */

/** What one broker may do, fixed by the stack in its environment. */
export interface BrokerConfig {
  /** `<overlay address>/32`. */
  readonly destination: string;
  readonly routeTableIds: readonly string[];
  /** Primary interfaces of the nodes allowed to hold the address. */
  readonly allowedEnis: readonly string[];
}

/** The environment variables the stack sets (values space-separated where they are lists). */
export const BROKER_ENV = {
  destination: "PYPI_BROKER_DESTINATION",
  routeTables: "PYPI_BROKER_ROUTE_TABLES",
  allowedEnis: "PYPI_BROKER_ALLOWED_ENIS",
} as const;

export interface RouteEntry {
  readonly DestinationCidrBlock?: string;
  readonly NetworkInterfaceId?: string;
}

/** The two EC2 calls the broker makes, as SDK v3's aggregated `EC2` client names them. */
export interface Ec2Routes {
  replaceRoute(params: {
    RouteTableId: string;
    DestinationCidrBlock: string;
    NetworkInterfaceId: string;
  }): Promise<unknown>;
  describeRouteTables(params: { RouteTableIds: string[] }): Promise<{
    RouteTables?: readonly { RouteTableId?: string; Routes?: readonly RouteEntry[] }[];
  }>;
}

export interface MoveResult {
  readonly destination: string;
  readonly networkInterfaceId: string;
  readonly routeTables: readonly string[];
}

export interface RetryOptions {
  /** Attempts per call, the first included. @default 4 */
  readonly attempts?: number;
  /** Delay before retry n (1-based) is `baseDelayMs * 2^(n-1)`. @default 200 */
  readonly baseDelayMs?: number;
  /** @default setTimeout */
  readonly sleep?: (ms: number) => Promise<void>;
  /** No retry starts after this time (epoch ms), so the function ends within its timeout. @default none */
  readonly deadline?: number;
  /** @default Date.now */
  readonly now?: () => number;
}

const ENI_ID = /^eni-[0-9a-f]{8,17}$/;
const RTB_ID = /^rtb-[0-9a-f]{8,17}$/;
const HOST_CIDR = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\/32$/;

const words = (v: string | undefined): string[] => (v ?? "").split(/\s+/).filter((w) => w !== "");

/** The broker's configuration from its environment; a missing or malformed value is a deploy bug. */
export function configFromEnv(env: Readonly<Record<string, string | undefined>>): BrokerConfig {
  const destination = env[BROKER_ENV.destination] ?? "";
  const routeTableIds = words(env[BROKER_ENV.routeTables]);
  const allowedEnis = words(env[BROKER_ENV.allowedEnis]);
  const bad = (name: string, value: unknown, expected: string): never => {
    throw new Error(`route broker misconfigured: ${name} ${JSON.stringify(value)}; expected ${expected}`);
  };
  if (!HOST_CIDR.test(destination)) bad(BROKER_ENV.destination, destination, "an IPv4 /32");
  if (routeTableIds.length === 0 || !routeTableIds.every((id) => RTB_ID.test(id)))
    bad(BROKER_ENV.routeTables, env[BROKER_ENV.routeTables], "route table ids");
  if (allowedEnis.length === 0 || !allowedEnis.every((id) => ENI_ID.test(id)))
    bad(BROKER_ENV.allowedEnis, env[BROKER_ENV.allowedEnis], "network interface ids");
  return { destination, routeTableIds, allowedEnis };
}

/** The one field an event may carry, checked before anything is called. */
export function parseEvent(event: unknown): string {
  const refuse = (why: string): never => {
    throw new Error(`refused: ${why}; expected {"networkInterfaceId": "eni-..."}`);
  };
  if (typeof event !== "object" || event === null || Array.isArray(event)) return refuse("not an object");
  const keys = Object.keys(event);
  if (keys.length !== 1 || keys[0] !== "networkInterfaceId") return refuse(`fields ${JSON.stringify(keys)}`);
  const id = (event as { networkInterfaceId: unknown }).networkInterfaceId;
  if (typeof id !== "string" || !ENI_ID.test(id)) return refuse(`networkInterfaceId ${JSON.stringify(id)}`);
  return id;
}

/** Error names (SDK v3 uses the EC2 error code) worth another try: throttling and transient faults. */
const TRANSIENT_NAMES = new Set([
  "Throttling",
  "ThrottlingException",
  "RequestLimitExceeded",
  "RequestThrottled",
  "RequestThrottledException",
  "TooManyRequestsException",
  "InternalError",
  "InternalFailure",
  "ServiceUnavailable",
  "Unavailable",
  "TimeoutError",
  "RequestTimeout",
  "RequestTimeoutException",
]);
const TRANSIENT_CODES = new Set(["ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "EAI_AGAIN"]);

export function isTransient(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  const e = error as { name?: unknown; code?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const status = e.$metadata?.httpStatusCode;
  return (
    (typeof e.name === "string" && TRANSIENT_NAMES.has(e.name)) ||
    (typeof e.code === "string" && TRANSIENT_CODES.has(e.code)) ||
    (typeof status === "number" && (status === 429 || status >= 500))
  );
}

/** `call`, retried on a transient error with exponential backoff; anything else, or the last failure, throws. */
export async function withRetry<T>(
  what: string,
  call: () => Promise<T>,
  opts: RetryOptions = {},
): Promise<T> {
  const attempts = opts.attempts ?? 4;
  const base = opts.baseDelayMs ?? 200;
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const delay = base * 2 ** (attempt - 1);
      const late = opts.deadline !== undefined && (opts.now ?? Date.now)() + delay >= opts.deadline;
      if (!isTransient(error) || attempt >= attempts || late) {
        const name = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
        throw new Error(`${what} failed after ${attempt} attempt(s): ${name}`, { cause: error });
      }
      await sleep(delay);
    }
  }
}

/**
 * Moves `config.destination` to the event's interface in every table, then reads each table back.
 * Refuses (throws, before any EC2 call) a malformed event or an interface off the allow-list;
 * throws when a table does not end up routing the destination to that interface.
 */
export async function moveRoute(
  ec2: Ec2Routes,
  config: BrokerConfig,
  event: unknown,
  retry: RetryOptions = {},
): Promise<MoveResult> {
  const eni = parseEvent(event);
  const { destination } = config;
  if (!config.allowedEnis.includes(eni)) throw new Error(`refused: ${eni} may not hold ${destination}`);
  const tables = [...config.routeTableIds];
  for (const table of tables)
    await withRetry(
      `ReplaceRoute ${destination} in ${table}`,
      () =>
        ec2.replaceRoute({ RouteTableId: table, DestinationCidrBlock: destination, NetworkInterfaceId: eni }),
      retry,
    );
  const described = await withRetry(
    `DescribeRouteTables ${tables.join(" ")}`,
    () => ec2.describeRouteTables({ RouteTableIds: tables }),
    retry,
  );
  for (const table of tables) {
    const routes = described.RouteTables?.find((t) => t.RouteTableId === table)?.Routes ?? [];
    const target = routes.find((r) => r.DestinationCidrBlock === destination)?.NetworkInterfaceId;
    if (target !== eni)
      throw new Error(`${table} routes ${destination} to ${target ?? "nothing"}, not ${eni}, after the move`);
  }
  return { destination, networkInterfaceId: eni, routeTables: tables };
}

/** The part of Lambda's context object the broker reads. */
export interface LambdaContext {
  getRemainingTimeInMillis(): number;
}

/** Each EC2 request's own bound (the SDK client's requestTimeout). */
export const REQUEST_TIMEOUT_MS = 5_000;

/** A Lambda entry point over a client factory: the runtime's SDK in `handler`, a fake in tests. */
export function brokerHandler(
  makeClient: () => Promise<Ec2Routes>,
  env: Readonly<Record<string, string | undefined>> = process.env,
): (event: unknown, context?: LambdaContext) => Promise<MoveResult> {
  let client: Ec2Routes | undefined;
  return async (event, context) => {
    const config = configFromEnv(env);
    client ??= await makeClient();
    // A call that starts before the deadline may run its whole request timeout.
    const left = context?.getRemainingTimeInMillis();
    const deadline = left === undefined ? undefined : Date.now() + left - REQUEST_TIMEOUT_MS - 1_000;
    try {
      const result = await moveRoute(client, config, event, { deadline });
      console.log(JSON.stringify({ moved: result }));
      return result;
    } catch (error) {
      console.error(JSON.stringify({ failed: event, destination: config.destination, error: String(error) }));
      throw error;
    }
  };
}

/** What Lambda calls (ROUTE_BROKER_HANDLER). A thrown error makes the invoke report FunctionError. */
export const handler = brokerHandler(ec2Client);

type Ec2Constructor = new (config: {
  maxAttempts: number;
  requestHandler: { connectionTimeout: number; requestTimeout: number };
}) => Ec2Routes;

async function ec2Client(): Promise<Ec2Routes> {
  // A variable specifier: neither tsc nor esbuild resolves it; the runtime ships SDK v3 (its
  // CommonJS build, whose named exports Node may only expose on `default`).
  const sdk = "@aws-sdk/client-ec2";
  const mod = (await import(sdk)) as { EC2?: Ec2Constructor; default?: { EC2?: Ec2Constructor } };
  const EC2 = mod.EC2 ?? mod.default?.EC2;
  if (EC2 === undefined) throw new Error(`${sdk} has no EC2 client`);
  // withRetry is the one retry loop; bounded calls turn a hung connection into a retry.
  return new EC2({
    maxAttempts: 1,
    requestHandler: { connectionTimeout: 2_000, requestTimeout: REQUEST_TIMEOUT_MS },
  });
}
