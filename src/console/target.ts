// Which VM addresses the gateway may dial (SSRF defence). Names are resolved first, every resolved
// address is checked, and the caller dials the checked address, never the name again: a second
// lookup could answer differently (DNS rebinding), and encoded forms such as 2130706433,
// 0x7f000001 or 127.1 only show their real address after resolution.
import { BlockList, isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import type { Protocol } from '../db/schema.js';
import { isSocketTarget, type Target } from '../db/sessions.js';
import { GatewayError } from '../errors.js';

interface Cidr {
  readonly text: string;
  readonly family: 'ipv4' | 'ipv6';
  readonly set: BlockList;
}

export interface CidrList {
  readonly cidrs: readonly Cidr[];
  readonly text: string;
}

function cidr(text: string): Cidr {
  const [address, prefixText, extra] = text.split('/');
  const version = isIP(address ?? '');
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (version === 0 || extra !== undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > max) {
    throw new Error(`"${text}" is not an address or CIDR range`);
  }
  const family = version === 4 ? 'ipv4' : 'ipv6';
  const set = new BlockList();
  set.addSubnet(address!, prefix, family);
  return { text, family, set };
}

/** Parses "10.0.0.0/8,fd00::/8,192.168.1.7"; throws on the first bad entry. */
export function parseCidrList(text: string): CidrList {
  const cidrs = text.split(',').map((s) => s.trim()).filter(Boolean).map(cidr);
  return { cidrs, text: cidrs.map((c) => c.text).join(',') };
}

// Addresses that reach the gateway host itself or the cloud metadata service. They pass only when
// a listed range lies inside them ("127.0.0.1/32"), never through a wide entry like 0.0.0.0/0.
const SPECIAL = ['127.0.0.0/8', '0.0.0.0/8', '169.254.0.0/16', '::1/128', '::/128', 'fe80::/10'].map(cidr);

function familyOf(address: string): 'ipv4' | 'ipv6' {
  return isIP(address) === 4 ? 'ipv4' : 'ipv6';
}

/** `::ffff:10.1.2.3` is 10.1.2.3 for every purpose here. */
function unmap(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

function inside(inner: Cidr, outer: Cidr): boolean {
  const [network, prefix] = inner.text.split('/');
  const [, outerPrefix] = outer.text.split('/');
  const innerBits = prefix === undefined ? (inner.family === 'ipv4' ? 32 : 128) : Number(prefix);
  const outerBits = outerPrefix === undefined ? (outer.family === 'ipv4' ? 32 : 128) : Number(outerPrefix);
  return inner.family === outer.family && innerBits >= outerBits && outer.set.check(network!, outer.family);
}

/** True when `address` (a literal IP) may be dialled under `allowed`. */
export function isAddressAllowed(address: string, allowed: CidrList): boolean {
  const ip = unmap(address);
  if (isIP(ip) === 0) return false;
  const family = familyOf(ip);
  const special = SPECIAL.find((s) => s.family === family && s.set.check(ip, family));
  return allowed.cidrs.some(
    (c) => c.family === family && c.set.check(ip, family) && (special === undefined || inside(c, special)),
  );
}

export type Resolver = (host: string) => Promise<string[]>;

export const systemResolver: Resolver = async (host) =>
  (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);

/**
 * Resolves `host` and checks every address it maps to. Returns the address to dial.
 * Throws TARGET_FORBIDDEN when any address is outside `allowed`, TARGET_UNRESOLVABLE when the
 * name does not resolve.
 */
export async function resolveTarget(host: string, allowed: CidrList, resolve: Resolver = systemResolver): Promise<string> {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  let addresses: string[];
  try {
    addresses = isIP(bare) !== 0 ? [bare] : await resolve(bare);
  } catch (error) {
    throw new GatewayError('TARGET_UNRESOLVABLE', `the VM host "${host}" does not resolve`, { cause: error });
  }
  if (addresses.length === 0) throw new GatewayError('TARGET_UNRESOLVABLE', `the VM host "${host}" does not resolve`);
  const refused = addresses.find((a) => !isAddressAllowed(a, allowed));
  if (refused !== undefined) {
    throw new GatewayError('TARGET_FORBIDDEN', `the VM address ${unmap(refused)} is outside TARGET_ALLOWED_CIDRS`);
  }
  return unmap(addresses[0]!);
}

// sun_path holds 108 bytes on Linux, the terminating NUL included.
const MAX_SOCKET_PATH_BYTES = 107;

/**
 * Validates the shape of a target before it is stored: `{host, port, path?, webRoot?}` or
 * `{socket}`. What suits the session's protocol is checkProtocolFit's; where the target may
 * point, vm-endpoint.ts's.
 */
export function validateTargetShape(target: Record<string, unknown>): Target {
  if (target.socket !== undefined) return socketShape(target);
  const { host, port, path, webRoot } = target;
  if (typeof host !== 'string' || host.length === 0 || host.length > 253 || !/^[A-Za-z0-9.:\-_[\]%]+$/.test(host)) {
    throw new GatewayError('BAD_REQUEST', 'target.host must be a host name or IP address');
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new GatewayError('BAD_REQUEST', 'target.port must be an integer between 1 and 65535');
  }
  if (path !== undefined && path !== null && (typeof path !== 'string' || path.length > 1024 || !/^\/?[\x21-\x7e]*$/.test(path))) {
    throw new GatewayError('BAD_REQUEST', 'target.path must be a URL path without spaces');
  }
  if (webRoot !== undefined && typeof webRoot !== 'boolean') throw new GatewayError('BAD_REQUEST', 'target.webRoot must be true or false');
  return { host, port, path: typeof path === 'string' && path !== '' ? path : null, ...(webRoot !== undefined ? { webRoot } : {}) };
}

function socketShape(target: Record<string, unknown>): Target {
  const { socket } = target;
  const mixed = ['host', 'port', 'path', 'webRoot'].filter((key) => target[key] !== undefined && target[key] !== null);
  if (mixed.length > 0) throw new GatewayError('BAD_REQUEST', `target.socket stands alone: drop target.${mixed.join(', target.')}`);
  if (typeof socket !== 'string' || !socket.startsWith('/') || Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES || /[\0\n\r]/.test(socket)) {
    throw new GatewayError('BAD_REQUEST', `target.socket must be an absolute path of at most ${MAX_SOCKET_PATH_BYTES} bytes`);
  }
  return { socket };
}

/** A unix socket is for `vnc` sessions, `webRoot` for `websockify` ones. */
export function checkProtocolFit(target: Target, protocol: Protocol): void {
  if (isSocketTarget(target) && protocol !== 'vnc') {
    throw new GatewayError('BAD_REQUEST', 'a unix-socket target needs a vnc session; websockify targets take host and port');
  }
  if (!isSocketTarget(target) && target.webRoot !== undefined && protocol !== 'websockify') {
    throw new GatewayError('BAD_REQUEST', 'target.webRoot applies to websockify targets only');
  }
}
