// The edge settings: who the client is behind balancers, per-client and per-session caps, the
// failed-upgrade throttle, framing policy, TLS and the sidecar ops port. Read by
// src/config.ts with its own readers, so every problem is still reported in the same one list.
import { parseCidrList, type CidrList } from './console/target.js';

export type ForwardedHeader = 'x-forwarded-for' | 'forwarded';

export interface EdgeConfig {
  /** Peers whose forwarding headers are believed; empty = believe none. */
  readonly trustedProxies: CidrList;
  /** The header the trusted proxies write: only that one is read, so a client cannot add the other. */
  readonly trustedProxyHeader: ForwardedHeader;
  /** Expect a PROXY protocol v1/v2 header on every connection to the listener. */
  readonly proxyProtocol: boolean;
  /** 0 = no cap. */
  readonly maxConsolesPerClient: number;
  readonly maxConsolesPerSession: number;
  readonly failedUpgradesPerMinute: number;
  /** CSP frame-ancestors sources for the console page. */
  readonly frameAncestors: readonly string[];
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
  /** /healthz, /readyz, /metrics of `gate` and `reconcile`. */
  readonly opsPort: number;
  /** Bearer token required on /metrics when set. */
  readonly metricsToken: string | undefined;
}

export interface EnvReaders {
  str(name: string): string | undefined;
  num(name: string, fallback: number, min: number, max?: number, integer?: boolean): number;
  bool(name: string, fallback: boolean): boolean;
  list(name: string): string[];
  problems: string[];
  /** ALLOWED_ORIGINS, already checked: the default of FRAME_ANCESTORS. */
  allowedOrigins: readonly string[];
}

// CSP source expressions an operator may list besides origins (CSP3 §2.3.1).
const FRAME_KEYWORDS = new Set(["'self'", "'none'", '*']);

export function readEdgeConfig({ str, num, bool, list, problems, allowedOrigins }: EnvReaders): EdgeConfig {
  let trustedProxies = parseCidrList('');
  try {
    trustedProxies = parseCidrList(str('TRUSTED_PROXIES') ?? '');
  } catch (error) {
    problems.push(`TRUSTED_PROXIES: ${(error as Error).message}`);
  }
  const header = (str('TRUSTED_PROXY_HEADER') ?? 'x-forwarded-for').toLowerCase();
  if (header !== 'x-forwarded-for' && header !== 'forwarded') {
    problems.push(`TRUSTED_PROXY_HEADER must be x-forwarded-for or forwarded, got "${header}"`);
  }

  const explicitAncestors = list('FRAME_ANCESTORS').map((a) => a.replace(/\/+$/, ''));
  for (const source of explicitAncestors) {
    if (!FRAME_KEYWORDS.has(source) && !/^https?:\/\/[^/\s;,']+$/.test(source)) {
      problems.push(`FRAME_ANCESTORS entry "${source}" must be an origin like https://app.example.com, 'self', 'none' or *`);
    }
  }
  // Unset: whoever may open consoles may frame the page; no ALLOWED_ORIGINS means same-origin only.
  const frameAncestors = explicitAncestors.length > 0 ? explicitAncestors : allowedOrigins.length > 0 ? [...allowedOrigins] : ["'self'"];

  const tlsCertFile = str('TLS_CERT_FILE');
  const tlsKeyFile = str('TLS_KEY_FILE');
  if ((tlsCertFile === undefined) !== (tlsKeyFile === undefined)) problems.push('TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither');

  const metricsToken = str('METRICS_TOKEN');
  if (metricsToken !== undefined && metricsToken.length < 16) problems.push('METRICS_TOKEN must be at least 16 characters');

  return {
    trustedProxies,
    trustedProxyHeader: header === 'forwarded' ? 'forwarded' : 'x-forwarded-for',
    proxyProtocol: bool('PROXY_PROTOCOL', false),
    maxConsolesPerClient: num('MAX_CONSOLES_PER_CLIENT', 20, 0),
    maxConsolesPerSession: num('MAX_CONSOLES_PER_SESSION', 10, 0),
    failedUpgradesPerMinute: num('FAILED_UPGRADES_PER_MINUTE', 60, 0),
    frameAncestors,
    tlsCertFile,
    tlsKeyFile,
    opsPort: num('OPS_PORT', 9464, 0, 65535),
    metricsToken,
  };
}
