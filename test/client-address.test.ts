// Who the client is: forwarding headers believed only from TRUSTED_PROXIES (right-most untrusted
// hop), the PROXY protocol v1/v2 on the listener, and `clientAddress` on the console's log lines.
import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Command, IPv4Address, IPv4ProxyAddress, IPv6Address, IPv6ProxyAddress, TransportProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientAddress, normalize } from '../src/console/client-address.js';
import { parseCidrList } from '../src/console/target.js';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

function request(peer: string, headers: Record<string, string>): IncomingMessage {
  return { socket: { remoteAddress: peer } as Socket, headers } as IncomingMessage;
}

const behind = (trusted: string, header: 'x-forwarded-for' | 'forwarded' = 'x-forwarded-for') => ({
  trustedProxies: parseCidrList(trusted),
  trustedProxyHeader: header,
});

describe('the client address', () => {
  it('is the TCP peer when no proxy is trusted, whatever the headers claim', () => {
    expect(clientAddress(request('203.0.113.7', { 'x-forwarded-for': '198.51.100.1' }), behind(''))).toBe('203.0.113.7');
  });

  it('is the right-most hop that is not a trusted proxy', () => {
    const req = request('10.0.0.2', { 'x-forwarded-for': '198.51.100.66, 203.0.113.7, 10.0.0.9' });
    expect(clientAddress(req, behind('10.0.0.0/8'))).toBe('203.0.113.7');
  });

  it('ignores the header of an untrusted peer that claims to be a proxy', () => {
    expect(clientAddress(request('203.0.113.7', { 'x-forwarded-for': '10.0.0.9' }), behind('10.0.0.0/8'))).toBe('203.0.113.7');
  });

  it('reads only the header the proxies write: a Forwarded header added by the client is ignored', () => {
    const req = request('10.0.0.2', { forwarded: 'for=198.51.100.66', 'x-forwarded-for': '203.0.113.7' });
    expect(clientAddress(req, behind('10.0.0.0/8'))).toBe('203.0.113.7');
    const rfc7239 = request('10.0.0.2', { forwarded: 'for=198.51.100.66, for="[2001:db8::7]:4711";proto=https, for=10.0.0.3', 'x-forwarded-for': '1.2.3.4' });
    expect(clientAddress(rfc7239, behind('10.0.0.0/8', 'forwarded'))).toBe('2001:db8::7');
  });

  it('stops at the last trusted proxy when a hop is unknown or garbage', () => {
    expect(clientAddress(request('10.0.0.2', { 'x-forwarded-for': 'not-an-ip, 10.0.0.3' }), behind('10.0.0.0/8'))).toBe('10.0.0.3');
    expect(clientAddress(request('10.0.0.2', { forwarded: 'for=_hidden' }), behind('10.0.0.0/8', 'forwarded'))).toBe('10.0.0.2');
    expect(clientAddress(request('10.0.0.2', { forwarded: 'for="unterminated' }), behind('10.0.0.0/8', 'forwarded'))).toBe('10.0.0.2');
  });

  it('compares addresses without ports, brackets or the IPv4-mapped prefix', () => {
    expect(normalize('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(normalize('203.0.113.7:5555')).toBe('203.0.113.7');
    expect(normalize('[2001:DB8::7]:443')).toBe('2001:db8::7');
    expect(normalize('example.com')).toBeUndefined();
    expect(clientAddress(request('::ffff:10.0.0.2', { 'x-forwarded-for': '203.0.113.7:5555' }), behind('10.0.0.0/8'))).toBe('203.0.113.7');
  });
});

let vnc: DemoVncServer;
let database: TestDatabase;
beforeAll(async () => {
  vnc = await startDemoVncServer();
  database = await createTestDatabase();
});
afterAll(async () => {
  await vnc?.close();
  await database?.drop();
});

async function consoleOf(gateway: TestGateway): Promise<string> {
  const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
  return `?ticket=${await gateway.mint(id)}`;
}

const connectedFrom = (gateway: TestGateway) => gateway.logs.filter((l) => l.msg === 'console connected').map((l) => l.clientAddress);

describe('a gateway behind a trusted proxy', () => {
  let gateway: TestGateway;
  beforeAll(async () => {
    gateway = await startTestGateway({ TRUSTED_PROXIES: '127.0.0.10/32' }, database.url);
  });
  afterAll(() => gateway?.stop());

  it('logs the forwarded client for the trusted proxy and the peer for anyone else', async () => {
    const viaProxy = await openConsole(gateway.wsUrl + (await consoleOf(gateway)), {
      localAddress: '127.0.0.10',
      headers: { 'x-forwarded-for': '198.51.100.66, 203.0.113.7' },
      untilMessages: 1,
    });
    expect(viaProxy.messages).toHaveLength(1);
    const forged = await openConsole(gateway.wsUrl + (await consoleOf(gateway)), {
      localAddress: '127.0.0.11',
      headers: { 'x-forwarded-for': '203.0.113.99' },
      untilMessages: 1,
    });
    expect(forged.messages).toHaveLength(1);
    expect(connectedFrom(gateway)).toEqual(['203.0.113.7', '127.0.0.11']);
    // Every line about those consoles carries it, the closing one too.
    await expect.poll(() => gateway.logs.filter((l) => String(l.msg).startsWith('console ended')).map((l) => l.clientAddress)).toEqual(['203.0.113.7', '127.0.0.11']);
  });
});

describe('a gateway with PROXY_PROTOCOL=true', () => {
  let gateway: TestGateway;
  // Its listener wants a PROXY header on every connection, the control API's too: sessions are
  // made through a plain replica on the same database.
  let control: TestGateway;
  beforeAll(async () => {
    gateway = await startTestGateway({ PROXY_PROTOCOL: 'true', HEADERS_TIMEOUT_SECONDS: '2' }, database.url);
    control = await startTestGateway({}, database.url);
  });
  afterAll(async () => {
    await gateway?.stop();
    await control?.stop();
  });

  const port = () => Number(new URL(gateway.url).port);

  /** Sends `header`, then a WebSocket upgrade, and resolves with the HTTP status line. */
  function upgradeAfter(header: Buffer | string, path: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect(port(), '127.0.0.1', () => {
        socket.write(header);
        socket.write(
          `GET /websockify${path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n`,
        );
      });
      let data = '';
      socket.on('data', (chunk) => {
        data += chunk.toString('latin1');
        if (data.includes('\r\n\r\n')) {
          socket.destroy();
          resolve(data.split('\r\n')[0]!);
        }
      });
      socket.on('error', reject);
      socket.on('close', () => resolve(data.split('\r\n')[0] ?? ''));
    });
  }

  it('takes the client address from a v1 or v2 header and the peer from a LOCAL one', async () => {
    expect(await upgradeAfter('PROXY TCP4 198.51.100.4 127.0.0.1 40000 443\r\n', await consoleOf(control))).toBe('HTTP/1.1 101 Switching Protocols');
    const v2 = new V2ProxyProtocol(
      Command.PROXY,
      TransportProtocol.STREAM,
      new IPv6ProxyAddress(IPv6Address.createFrom([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42]), 40000, IPv6Address.createFrom(new Array(16).fill(0)), 443),
    ).build();
    expect(await upgradeAfter(Buffer.from(v2), await consoleOf(control))).toBe('HTTP/1.1 101 Switching Protocols');
    const local = new V2ProxyProtocol(Command.LOCAL, TransportProtocol.UNSPEC, new IPv4ProxyAddress(IPv4Address.createWithEmptyAddress(), 0, IPv4Address.createWithEmptyAddress(), 0)).build();
    expect(await upgradeAfter(Buffer.from(local), await consoleOf(control))).toBe('HTTP/1.1 101 Switching Protocols');
    await expect.poll(() => connectedFrom(gateway)).toEqual(['198.51.100.4', '2001:db8::42', '127.0.0.1']);
  });

  it('drops a connection that does not start with a PROXY header, and one that sends none in time', async () => {
    expect(await upgradeAfter('', await consoleOf(control))).toBe('');
    const started = Date.now();
    const silent = connect(port(), '127.0.0.1');
    await new Promise((resolve) => silent.on('close', resolve).on('error', () => {}));
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_900);
    expect(Date.now() - started).toBeLessThan(3_500);
  });
});
