// Who the client is, behind load balancers. The TCP peer (or the source a PROXY protocol header
// named) is the client unless it is a trusted proxy; then the forwarding header the proxies write
// is walked from the right, and the first hop that is not a trusted proxy is the client. Entries
// left of it were written by the client itself and are never believed.
import type { IncomingMessage } from 'node:http';
import { isIP, type Socket } from 'node:net';
import forwardedParse from 'forwarded-parse';
import type { ForwardedHeader } from '../edge-config.js';
import type { CidrList } from './target.js';

export interface ClientAddressPolicy {
  readonly trustedProxies: CidrList;
  readonly trustedProxyHeader: ForwardedHeader;
}

// The source address a PROXY protocol header gave the connection (src/console/proxy-protocol.ts).
const proxiedSources = new WeakMap<Socket, string>();

export function setProxiedSource(socket: Socket, address: string): void {
  proxiedSources.set(socket, address);
}

/** The peer of a connection: the PROXY protocol source when one was given, else the TCP peer. */
export function peerAddress(socket: Socket): string {
  // A TLS socket wraps the raw one the PROXY header arrived on (node's TLSSocket keeps it as _parent).
  const raw = (socket as Socket & { _parent?: Socket })._parent;
  const proxied = proxiedSources.get(socket) ?? (raw === undefined ? undefined : proxiedSources.get(raw));
  return normalize(proxied ?? socket.remoteAddress ?? '') ?? 'unknown';
}

/** The client's address for limits and logs; always an IP literal (or "unknown" without a peer). */
export function clientAddress(req: IncomingMessage, policy: ClientAddressPolicy): string {
  let client = peerAddress(req.socket);
  if (!isTrusted(client, policy.trustedProxies)) return client;
  const hops = forwardedHops(req, policy.trustedProxyHeader);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = normalize(hops[i]!);
    // "unknown", an obfuscated name or garbage: nothing left of it can be placed, so the client is
    // the last proxy we could vouch for.
    if (hop === undefined) return client;
    client = hop;
    if (!isTrusted(hop, policy.trustedProxies)) return hop;
  }
  return client;
}

function forwardedHops(req: IncomingMessage, header: ForwardedHeader): string[] {
  if (header === 'x-forwarded-for') {
    const value = req.headers['x-forwarded-for'];
    return value === undefined ? [] : String(value).split(',').map((s) => s.trim());
  }
  const value = req.headers.forwarded;
  if (value === undefined) return [];
  try {
    return forwardedParse(value).map((element) => element.for ?? '');
  } catch {
    // A syntax error anywhere makes every element doubtful (RFC 7239 §4): believe none of them.
    return ['unknown'];
  }
}

/** An IP literal without port, brackets or the IPv4-mapped prefix; undefined when it is none. */
export function normalize(raw: string): string | undefined {
  let text = raw.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(text);
  if (bracketed) text = bracketed[1]!;
  else if (/^\d+\.\d+\.\d+\.\d+:\d+$/.test(text)) text = text.slice(0, text.lastIndexOf(':'));
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(text);
  if (mapped) text = mapped[1]!;
  const version = isIP(text);
  if (version === 0) return undefined;
  // One spelling per address, so caps and the throttle count 2001:db8:0::42 and 2001:db8::42 together.
  return version === 6 ? new URL(`http://[${text}]/`).hostname.slice(1, -1) : text;
}

function isTrusted(address: string, trusted: CidrList): boolean {
  const version = isIP(address);
  if (version === 0) return false;
  const family = version === 4 ? 'ipv4' : 'ipv6';
  return trusted.cidrs.some((c) => c.family === family && c.set.check(address, family));
}
