import { describe, expect, it } from 'vitest';
import { isAddressAllowed, parseCidrList, resolveTarget, validateTargetShape } from '../src/console/target.js';
import { DEFAULT_TARGET_CIDRS } from '../src/config.js';
import { GatewayError } from '../src/errors.js';

const defaults = parseCidrList(DEFAULT_TARGET_CIDRS);

async function code(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(GatewayError);
  return (error as GatewayError).code;
}

describe('target address checks', () => {
  it('allows private ranges by default and refuses public, loopback and link-local addresses', () => {
    expect(isAddressAllowed('10.1.2.3', defaults)).toBe(true);
    expect(isAddressAllowed('192.168.5.6', defaults)).toBe(true);
    expect(isAddressAllowed('fd12::1', defaults)).toBe(true);
    expect(isAddressAllowed('8.8.8.8', defaults)).toBe(false);
    expect(isAddressAllowed('127.0.0.1', defaults)).toBe(false);
    expect(isAddressAllowed('169.254.169.254', defaults)).toBe(false);
    expect(isAddressAllowed('::1', defaults)).toBe(false);
  });

  it('treats IPv4-mapped IPv6 as the IPv4 address', () => {
    expect(isAddressAllowed('::ffff:10.0.0.1', defaults)).toBe(true);
    expect(isAddressAllowed('::ffff:127.0.0.1', defaults)).toBe(false);
  });

  it('never lets a wide range admit loopback or cloud metadata; only an explicit entry does', () => {
    const wide = parseCidrList('0.0.0.0/0,::/0');
    expect(isAddressAllowed('8.8.8.8', wide)).toBe(true);
    expect(isAddressAllowed('127.0.0.1', wide)).toBe(false);
    expect(isAddressAllowed('169.254.169.254', wide)).toBe(false);
    expect(isAddressAllowed('0.0.0.0', wide)).toBe(false);
    const explicit = parseCidrList('127.0.0.1/32');
    expect(isAddressAllowed('127.0.0.1', explicit)).toBe(true);
    expect(isAddressAllowed('127.0.0.2', explicit)).toBe(false);
  });

  it.each(['2130706433', '0x7f000001', '127.1', '0177.0.0.1', 'localhost'])(
    'resolves the encoded loopback form %s and refuses it',
    async (host) => {
      expect(await code(resolveTarget(host, defaults))).toBe('TARGET_FORBIDDEN');
    },
  );

  it('returns the checked address to dial, and refuses a name if any of its addresses is outside', async () => {
    const list = parseCidrList('10.0.0.0/8');
    await expect(resolveTarget('vm.internal', list, async () => ['10.0.0.7'])).resolves.toBe('10.0.0.7');
    expect(await code(resolveTarget('vm.internal', list, async () => ['10.0.0.7', '169.254.169.254']))).toBe('TARGET_FORBIDDEN');
    expect(await code(resolveTarget('nowhere.invalid', list, async () => Promise.reject(new Error('ENOTFOUND'))))).toBe('TARGET_UNRESOLVABLE');
  });

  it('rejects malformed CIDR lists and target shapes with a clear message', () => {
    expect(() => parseCidrList('10.0.0.0/33')).toThrow(/not an address or CIDR range/);
    expect(() => parseCidrList('banana')).toThrow(/banana/);
    expect(() => validateTargetShape({ host: 'vm', port: 70000 })).toThrow(/port/);
    expect(() => validateTargetShape({ host: 'a b', port: 5900 })).toThrow(/host/);
    expect(() => validateTargetShape({ host: 'vm', port: 5900, path: 'has space' })).toThrow(/path/);
    expect(validateTargetShape({ host: 'vm', port: 5900 })).toEqual({ host: 'vm', port: 5900, path: null });
  });
});
