// Fair shares of one replica: the console caps (whole gateway, per client address, per session)
// and the failed-upgrade throttle. Every refusal is 1013 with a reason naming the setting, and is
// counted by cap. Counts are this replica's own: behind a balancer each replica holds its share.
// The whole-gateway cap is also kept within the open-file limit: past it the kernel refuses the
// sockets themselves, and the browser would see a reset connection (1006) instead of a 1013.
import { readFileSync } from 'node:fs';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { GatewayError, type ErrorCode } from '../errors.js';
import type { Metrics } from '../ops/metrics.js';

export interface LimitSettings {
  /** 0 = no cap, for each. */
  maxConsoles: number;
  /** What sets maxConsoles, for the refusal's reason; `MAX_CONSOLES=<n>` unless told. */
  maxConsolesSetBy?: string;
  maxConsolesPerClient: number;
  maxConsolesPerSession: number;
  failedUpgradesPerMinute: number;
  /** Addresses the throttle remembers at once (least recently used forgotten first). */
  throttleEntries?: number;
}

/** The cap label of console_gateway_refusals_total. */
export type Cap = 'max_consoles' | 'max_consoles_per_client' | 'max_consoles_per_session' | 'failed_upgrades_per_minute';

// What a client gets wrong when it guesses or replays tickets or opens consoles from a stranger's
// page; a wait timeout or a dial failure is the platform's trouble, not the client's.
const FAILURES: ReadonlySet<ErrorCode> = new Set(['TICKET_MISSING', 'TICKET_INVALID', 'TICKET_EXPIRED', 'TICKET_USED', 'ORIGIN_FORBIDDEN']);

const WINDOW_MS = 60_000;
// One entry per misbehaving address for a minute: a flood from many addresses evicts the oldest
// instead of growing without bound.
const THROTTLE_ENTRIES = 50_000;

interface Window {
  failures: number;
}

export class Limits {
  private readonly perClient = new Map<string, number>();
  private readonly perSession = new Map<string, number>();
  private readonly failures: LRUCache<string, Window>;

  constructor(
    private readonly settings: LimitSettings,
    private readonly metrics: Pick<Metrics, 'refusals'>,
  ) {
    this.failures = new LRUCache<string, Window>({ max: settings.throttleEntries ?? THROTTLE_ENTRIES, ttl: WINDOW_MS, ttlAutopurge: false });
  }

  /** Addresses the throttle currently remembers. */
  get remembered(): number {
    return this.failures.size;
  }

  /** Refuses, before any ticket work, an address past FAILED_UPGRADES_PER_MINUTE. */
  checkThrottle(client: string): void {
    const limit = this.settings.failedUpgradesPerMinute;
    if (limit > 0 && (this.failures.get(client)?.failures ?? 0) >= limit) {
      this.refuse('failed_upgrades_per_minute', 'THROTTLED', `too many failed console attempts from your address (FAILED_UPGRADES_PER_MINUTE=${limit}); wait a minute`);
    }
  }

  /** Counts a refusal against the client's minute when it is one the client caused. */
  noteRefusal(client: string, error: unknown): void {
    if (this.settings.failedUpgradesPerMinute === 0 || !(error instanceof GatewayError) || !FAILURES.has(error.code)) return;
    const window = this.failures.get(client);
    // The window is fixed from the first failure: its entry expires a minute later, whatever follows.
    if (window === undefined) this.failures.set(client, { failures: 1 });
    else window.failures++;
  }

  /** Takes a console slot of the gateway and of the client; the returned function gives both back. */
  holdClient(client: string, gatewayConsoles: number): () => void {
    const { maxConsoles, maxConsolesPerClient } = this.settings;
    if (maxConsoles > 0 && gatewayConsoles >= maxConsoles) {
      const setBy = this.settings.maxConsolesSetBy ?? `MAX_CONSOLES=${maxConsoles}`;
      this.refuse('max_consoles', 'CAPACITY', `the gateway is at its console limit (${setBy}); try again shortly`);
    }
    if (maxConsolesPerClient > 0 && (this.perClient.get(client) ?? 0) >= maxConsolesPerClient) {
      this.refuse('max_consoles_per_client', 'CLIENT_CAPACITY', `your address has ${maxConsolesPerClient} consoles open (MAX_CONSOLES_PER_CLIENT); close one and retry`);
    }
    return hold(this.perClient, client);
  }

  /** Takes a console slot of the session; the returned function gives it back. */
  holdSession(sessionId: string): () => void {
    const max = this.settings.maxConsolesPerSession;
    if (max > 0 && (this.perSession.get(sessionId) ?? 0) >= max) {
      this.refuse('max_consoles_per_session', 'SESSION_CAPACITY', `this session has ${max} consoles open (MAX_CONSOLES_PER_SESSION); close one and retry`);
    }
    return hold(this.perSession, sessionId);
  }

  private refuse(cap: Cap, code: ErrorCode, message: string): never {
    this.metrics.refusals.inc({ cap });
    throw new GatewayError(code, message);
  }
}

/** Counts one holder of `key`; the returned function (idempotent) un-counts it, forgetting zeros. */
function hold(counts: Map<string, number>, key: string): () => void {
  counts.set(key, (counts.get(key) ?? 0) + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    const left = (counts.get(key) ?? 1) - 1;
    if (left <= 0) counts.delete(key);
    else counts.set(key, left);
  };
}

/** Descriptors kept for all but consoles: listeners, database connections, probes, files, stdio. */
export const RESERVED_FILES = 256;

export interface ConsoleCap {
  maxConsoles: number;
  /** Set when the open-file limit, not MAX_CONSOLES, sets the cap. */
  maxConsolesSetBy?: string;
}

/**
 * MAX_CONSOLES within the open-file limit: a console holds two descriptors (browser and VM), and
 * RESERVED_FILES stay for the rest. `openFiles` undefined (not known here): MAX_CONSOLES as it is.
 */
export function consoleCap(maxConsoles: number, openFiles: number | undefined): ConsoleCap {
  if (openFiles === undefined) return { maxConsoles };
  const fit = Math.max(1, Math.floor((openFiles - RESERVED_FILES) / 2));
  if (maxConsoles > 0 && maxConsoles <= fit) return { maxConsoles };
  return { maxConsoles: fit, maxConsolesSetBy: `the open-file limit of ${openFiles}, two per console` };
}

/**
 * This process's open-file limit, from /proc (Linux); undefined where it cannot be read. Node
 * raises the soft limit to the hard one as it starts, so this is the hard limit it was given.
 */
export function openFileLimit(limits = '/proc/self/limits'): number | undefined {
  try {
    const match = /^Max open files\s+(\d+)/m.exec(readFileSync(limits, 'utf8'));
    return match === null ? undefined : Number(match[1]);
  } catch {
    return undefined;
  }
}

export function createLimits(config: Config, metrics: Pick<Metrics, 'refusals'>, log: Logger): Limits {
  const { maxConsolesPerClient, maxConsolesPerSession, failedUpgradesPerMinute } = config.edge;
  const openFiles = openFileLimit();
  const cap = consoleCap(config.maxConsoles, openFiles);
  if (cap.maxConsolesSetBy !== undefined) {
    const fields = { maxConsoles: config.maxConsoles, openFiles, consoles: cap.maxConsoles };
    // MAX_CONSOLES=0 asked for no cap of its own: the open-file cap is news, not a misconfiguration.
    if (config.maxConsoles === 0) log.info(fields, 'MAX_CONSOLES=0: consoles are capped by the open-file limit alone (two per console)');
    else log.warn(fields, 'MAX_CONSOLES does not fit the open-file limit (two per console): consoles are capped below it; raise the limit (ulimit -n, LimitNOFILE=) or lower MAX_CONSOLES');
  }
  return new Limits({ ...cap, maxConsolesPerClient, maxConsolesPerSession, failedUpgradesPerMinute }, metrics);
}
