// The only module that reads process.env. Every problem is collected and reported at once, so an
// operator fixes a deployment in one round trip; the result is frozen.
import { isAbsolute, normalize } from 'node:path';
import { parseCidrList, type CidrList } from './console/target.js';
import { readEdgeConfig, type EdgeConfig } from './edge-config.js';

export interface Config {
  readonly port: number;
  readonly host: string;
  /** Base of console URLs and the same-origin default; unset = derived from the request's Host. */
  readonly publicUrl: string | undefined;
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  readonly logLevel: string;
  readonly controlToken: string | undefined;
  readonly ticketSecret: Uint8Array | undefined;
  readonly ticketJwksFile: string | undefined;
  readonly ticketAudience: string;
  readonly ticketIssuers: readonly string[];
  readonly ticketDefaultTtlSeconds: number;
  readonly ticketMaxTtlSeconds: number;
  readonly allowedOrigins: readonly string[];
  readonly targetAllowedCidrs: CidrList;
  /** Directories whose unix sockets `vnc` targets may name; empty: no unix-socket targets. */
  readonly targetAllowedSocketDirs: readonly string[];
  readonly targetWaitTimeoutSeconds: number;
  readonly connectTimeoutSeconds: number;
  readonly idleTimeoutSeconds: number;
  readonly maxDurationSeconds: number;
  /** How often a live console's browser is pinged; one unanswered ping ends it. */
  readonly heartbeatSeconds: number;
  readonly maxConsoles: number;
  readonly drainTimeoutSeconds: number;
  readonly headersTimeoutSeconds: number;
  readonly migrateOnStart: boolean;
  readonly readyGatingEnabled: boolean;
  readonly readyTimeoutSeconds: number;
  readonly readyPollIntervalSeconds: number;
  readonly readyPaths: readonly string[];
  readonly gateEnabled: boolean;
  readonly portRangeStart: number;
  readonly portRangeEnd: number;
  readonly maxSessions: number;
  readonly reconciliationEnabled: boolean;
  readonly reconciliationIntervalSeconds: number;
  readonly reconciliationUnreachableProbes: number;
  readonly reconciliationNamespaces: readonly string[];
  readonly sessionPendingTimeoutSeconds: number;
  readonly portLeaseSeconds: number;
  readonly portBindCheck: boolean;
  readonly runtimeHookCommand: readonly string[];
  readonly runtimeHookTimeoutSeconds: number;
  readonly edge: EdgeConfig;
  /** The runtime hook's whole environment: PATH, HOME, LANG and the names in RUNTIME_HOOK_ENV. */
  readonly runtimeHookEnv: Readonly<Record<string, string>>;
  /** AES-256-GCM key sealing stored VNC credentials; undefined = credentials cannot be stored. */
  readonly credentialsKey: Uint8Array | undefined;
}

export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration: ${problems.join('; ')}`);
  }
}

/** Private ranges: RFC 1918, RFC 6598 shared space, IPv6 unique local. */
export const DEFAULT_TARGET_CIDRS = '10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7';

type Env = Readonly<Record<string, string | undefined>>;

/** What every hook gets; the gateway's secrets and database can never be passed on. */
const HOOK_BASE_ENV = ['PATH', 'HOME', 'LANG'];
const NEVER_TO_HOOK = ['TICKET_SECRET', 'CONTROL_TOKEN', 'DATABASE_URL', 'CREDENTIALS_KEY', 'METRICS_TOKEN'];

/** The runtime hook is a third-party program: it gets the variables it is given, no more. */
function hookEnvironment(env: Env, names: readonly string[], problems: string[]): Record<string, string> {
  for (const name of names) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) problems.push(`RUNTIME_HOOK_ENV entry "${name}" is not a variable name`);
    else if (NEVER_TO_HOOK.includes(name)) problems.push(`RUNTIME_HOOK_ENV must not pass ${name} to the runtime hook`);
  }
  const passed = [...HOOK_BASE_ENV, ...names.filter((n) => !NEVER_TO_HOOK.includes(n))];
  return Object.fromEntries(passed.flatMap((name) => (env[name] === undefined ? [] : [[name, env[name]!]])));
}

/**
 * Reads the configuration from `env` (process.env by default); throws ConfigError listing every
 * problem. `needs.tickets`: the command verifies or mints tickets, so a key is required.
 */
export function loadConfig(env: Env = process.env, needs: { tickets?: boolean } = {}): Config {
  const problems: string[] = [];
  const str = (name: string): string | undefined => {
    const value = env[name]?.trim();
    return value === '' ? undefined : value;
  };
  const num = (name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER, integer = true): number => {
    const raw = str(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || value > max) {
      problems.push(`${name} must be ${integer ? 'an integer' : 'a number'} between ${min} and ${max}, got "${raw}"`);
      return fallback;
    }
    return value;
  };
  const bool = (name: string, fallback: boolean): boolean => {
    const raw = str(name)?.toLowerCase();
    if (raw === undefined) return fallback;
    if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
    if (['0', 'false', 'no', 'off'].includes(raw)) return false;
    problems.push(`${name} must be true or false, got "${raw}"`);
    return fallback;
  };
  const list = (name: string): string[] => (str(name) ?? '').split(',').map((s) => s.trim()).filter(Boolean);

  const port = num('PORT', 8080, 0, 65535);
  const host = str('HOST') ?? '0.0.0.0';
  let publicUrl = str('PUBLIC_URL')?.replace(/\/+$/, '');
  if (publicUrl !== undefined && !/^https?:\/\/[^/?#]+(\/[^?#]*)?$/.test(publicUrl)) {
    problems.push(`PUBLIC_URL must be an http(s) URL without query, got "${publicUrl}"`);
    publicUrl = undefined;
  }

  const databaseUrl = str('DATABASE_URL');
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problems.push('DATABASE_URL must be a postgres:// or postgresql:// URL');
  }

  const secretText = env.TICKET_SECRET;
  let ticketSecret: Uint8Array | undefined;
  if (secretText !== undefined && secretText !== '') {
    ticketSecret = new TextEncoder().encode(secretText);
    // Never echo the secret, only its length (RFC 7518 §3.2: HS256 keys are at least 256 bits).
    if (ticketSecret.length < 32) problems.push(`TICKET_SECRET must be at least 32 bytes, got ${ticketSecret.length}`);
  }
  const ticketJwksFile = str('TICKET_JWKS_FILE');
  if (needs.tickets && ticketSecret === undefined && ticketJwksFile === undefined) {
    problems.push('set TICKET_SECRET (at least 32 bytes) or TICKET_JWKS_FILE, or both: tickets cannot be verified otherwise');
  }

  const ticketMaxTtlSeconds = num('TICKET_MAX_TTL_SECONDS', 300, 1, 3600);
  const ticketDefaultTtlSeconds = num('TICKET_TTL_SECONDS', 60, 1, 3600);
  if (ticketDefaultTtlSeconds > ticketMaxTtlSeconds) {
    problems.push(`TICKET_TTL_SECONDS (${ticketDefaultTtlSeconds}) must not exceed TICKET_MAX_TTL_SECONDS (${ticketMaxTtlSeconds})`);
  }

  const allowedOrigins = list('ALLOWED_ORIGINS').map((o) => o.replace(/\/+$/, ''));
  for (const origin of allowedOrigins) {
    if (origin !== '*' && !/^https?:\/\/[^/]+$/.test(origin)) problems.push(`ALLOWED_ORIGINS entry "${origin}" must look like https://host[:port]`);
  }

  let targetAllowedCidrs: CidrList = parseCidrList(DEFAULT_TARGET_CIDRS);
  try {
    targetAllowedCidrs = parseCidrList(str('TARGET_ALLOWED_CIDRS') ?? DEFAULT_TARGET_CIDRS);
  } catch (error) {
    problems.push(`TARGET_ALLOWED_CIDRS: ${(error as Error).message}`);
  }

  const targetAllowedSocketDirs = list('TARGET_ALLOWED_SOCKET_DIRS').map((dir) => normalize(dir).replace(/(.)\/+$/, '$1'));
  for (const dir of targetAllowedSocketDirs) {
    if (!isAbsolute(dir)) problems.push(`TARGET_ALLOWED_SOCKET_DIRS entry "${dir}" must be an absolute directory path`);
  }

  // [] is allowed: no HTTP step at all, for fleets whose websockify targets serve no noVNC pages.
  let readyPaths: string[] = ['vnc.html', 'vnc_lite.html', ''];
  const rawPaths = str('NOVNC_READY_PATHS');
  if (rawPaths !== undefined) {
    try {
      const parsed: unknown = JSON.parse(rawPaths);
      if (!Array.isArray(parsed) || !parsed.every((p) => typeof p === 'string')) throw new Error();
      readyPaths = parsed as string[];
    } catch {
      problems.push('NOVNC_READY_PATHS must be a JSON array of strings, like ["vnc.html","vnc_lite.html",""] ([] skips the HTTP check)');
    }
  }

  const portRangeStart = num('VNC_WS_PORT_START', 6100, 1, 65535);
  const portRangeEnd = num('VNC_WS_PORT_END', 6999, 1, 65535);
  if (portRangeEnd < portRangeStart) problems.push(`VNC_WS_PORT_END (${portRangeEnd}) is below VNC_WS_PORT_START (${portRangeStart})`);

  let runtimeHookCommand: string[] = [];
  const rawHook = str('RUNTIME_HOOK_COMMAND');
  if (rawHook !== undefined) {
    try {
      const parsed: unknown = JSON.parse(rawHook);
      if (!Array.isArray(parsed) || parsed.length === 0 || !parsed.every((p) => typeof p === 'string')) throw new Error();
      runtimeHookCommand = parsed as string[];
    } catch {
      problems.push('RUNTIME_HOOK_COMMAND must be a JSON array: the program and its arguments, like ["./examples/hooks/compose-hook.sh"]');
    }
  }

  const runtimeHookEnv = hookEnvironment(env, list('RUNTIME_HOOK_ENV'), problems);

  const logLevel = str('LOG_LEVEL') ?? 'info';
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) {
    problems.push(`LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "${logLevel}"`);
  }

  const controlToken = str('CONTROL_TOKEN');
  if (controlToken !== undefined && controlToken.length < 16) problems.push('CONTROL_TOKEN must be at least 16 characters');

  const credentialsKey = base64Key(env.CREDENTIALS_KEY, 'CREDENTIALS_KEY', problems);

  const config: Config = {
    port,
    host,
    publicUrl,
    databaseUrl,
    dataDir: str('DATA_DIR') ?? './data',
    logLevel,
    controlToken,
    ticketSecret,
    ticketJwksFile,
    ticketAudience: str('TICKET_AUDIENCE') ?? 'console-gateway',
    ticketIssuers: list('TICKET_ISSUERS'),
    ticketDefaultTtlSeconds,
    ticketMaxTtlSeconds,
    allowedOrigins,
    targetAllowedCidrs,
    targetAllowedSocketDirs,
    targetWaitTimeoutSeconds: num('TARGET_WAIT_TIMEOUT_SECONDS', 25, 0, 3600, false),
    connectTimeoutSeconds: num('TARGET_CONNECT_TIMEOUT_SECONDS', 5, 0.1, 120, false),
    idleTimeoutSeconds: num('CONSOLE_IDLE_TIMEOUT_SECONDS', 0, 0),
    maxDurationSeconds: num('CONSOLE_MAX_DURATION_SECONDS', 0, 0),
    heartbeatSeconds: num('CONSOLE_HEARTBEAT_SECONDS', 30, 1, 3600),
    maxConsoles: num('MAX_CONSOLES', 20000, 0),
    drainTimeoutSeconds: num('DRAIN_TIMEOUT_SECONDS', 20, 0, 3600, false),
    headersTimeoutSeconds: num('HEADERS_TIMEOUT_SECONDS', 10, 1, 300),
    migrateOnStart: bool('MIGRATE_ON_START', true),
    readyGatingEnabled: bool('NOVNC_READY_GATING_ENABLED', true),
    readyTimeoutSeconds: num('NOVNC_READY_TIMEOUT_SECONDS', 120, 0.1, 86400, false),
    readyPollIntervalSeconds: num('NOVNC_READY_POLL_INTERVAL_SECONDS', 1, 0.05, 3600, false),
    readyPaths,
    gateEnabled: bool('GATE_ENABLED', true),
    portRangeStart,
    portRangeEnd,
    maxSessions: num('VNC_MAX_SESSIONS', 800, 0),
    reconciliationEnabled: bool('RECONCILIATION_ENABLED', true),
    reconciliationIntervalSeconds: num('RECONCILIATION_INTERVAL', 300, 1),
    reconciliationUnreachableProbes: num('RECONCILIATION_UNREACHABLE_PROBES', 3, 1, 1000),
    reconciliationNamespaces: list('RECONCILIATION_NAMESPACES'),
    sessionPendingTimeoutSeconds: num('SESSION_PENDING_TIMEOUT_SECONDS', 3600, 1),
    portLeaseSeconds: num('PORT_LEASE_SECONDS', 3600, 1),
    portBindCheck: bool('PORT_BIND_CHECK', false),
    runtimeHookCommand,
    runtimeHookTimeoutSeconds: num('RUNTIME_HOOK_TIMEOUT_SECONDS', 30, 1, 3600, false),
    edge: readEdgeConfig({ str, num, bool, list, problems, allowedOrigins }),
    runtimeHookEnv,
    credentialsKey,
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

/** A 32-byte key given as base64 (`openssl rand -base64 32`); the problem names only its length. */
function base64Key(raw: string | undefined, name: string, problems: string[]): Uint8Array | undefined {
  const text = raw?.trim();
  if (text === undefined || text === '') return undefined;
  const key = /^[A-Za-z0-9+/_-]+={0,2}$/.test(text) ? Buffer.from(text, 'base64') : Buffer.alloc(0);
  if (key.length !== 32) {
    problems.push(`${name} must be 32 bytes in base64 (openssl rand -base64 32), got ${key.length === 0 ? 'no base64' : `${key.length} bytes`}`);
    return undefined;
  }
  return new Uint8Array(key);
}
