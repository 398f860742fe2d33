// The listening socket: slow-header connections are gone within HEADERS_TIMEOUT_SECONDS + 1 s, and
// TLS (certificates made by the openssl CLI) is reloaded without a restart when its files change,
// with or without a PROXY protocol header in front.
import { execFileSync } from 'node:child_process';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let database: TestDatabase;
let dir: string;
beforeAll(async () => {
  database = await createTestDatabase();
  dir = await mkdtemp(join(tmpdir(), 'cg-tls-'));
});
afterAll(async () => {
  await database?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const portOf = (gateway: TestGateway) => Number(new URL(gateway.url).port);

describe('header deadlines', () => {
  let gateway: TestGateway;
  beforeAll(async () => {
    gateway = await startTestGateway({ HEADERS_TIMEOUT_SECONDS: '2' }, database.url);
  });
  afterAll(() => gateway?.stop());

  it('drops a connection that trickles its headers within HEADERS_TIMEOUT_SECONDS + 1 s', async () => {
    const server = gateway.running.gateway.server;
    const connections = () => new Promise<number>((resolve) => server.getConnections((_e, n) => resolve(n)));
    // allowHalfOpen: this client never closes its side; only the server can end the connection.
    const slow: Socket = connect({ port: portOf(gateway), host: '127.0.0.1', allowHalfOpen: true });
    slow.on('error', () => {});
    await new Promise((resolve) => slow.once('connect', resolve));
    const started = Date.now();
    slow.write('GET /websockify HTTP/1.1\r\nHost: gw\r\n');
    const drip = setInterval(() => slow.writable && slow.write('X-Slow: 1\r\n'), 300);
    try {
      await expect.poll(connections, { timeout: 5_000, interval: 50 }).toBe(1);
      await expect.poll(connections, { timeout: 5_000, interval: 50 }).toBe(0);
      const gone = Date.now() - started;
      expect(gone).toBeGreaterThanOrEqual(1_900);
      // The deadline plus one check interval, plus this poll's own granularity and a loaded machine.
      expect(gone).toBeLessThanOrEqual(3_000 + 300);
    } finally {
      clearInterval(drip);
      slow.destroy();
    }
  });
});

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** A self-signed certificate for `name`, written to cert.pem/key.pem under `into`. */
async function makeCertificate(into: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(into, `${name}.cert.pem`);
  const key = join(into, `${name}.key.pem`);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert]);
  return { cert, key };
}

function peerCertificate(port: number): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      resolve(cert);
    });
    socket.on('error', reject);
  });
}

describe('TLS on the listener', () => {
  let gateway: TestGateway;
  // The test's fetch does not trust the self-signed certificate: sessions are made through a plain
  // replica on the same database.
  let control: TestGateway;
  let vnc: DemoVncServer;
  let certFile: string;
  let keyFile: string;
  beforeAll(async () => {
    vnc = await startDemoVncServer();
    const first = await makeCertificate(dir, 'first');
    certFile = join(dir, 'tls.crt');
    keyFile = join(dir, 'tls.key');
    await rename(first.cert, certFile);
    await rename(first.key, keyFile);
    gateway = await startTestGateway({ TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile }, database.url);
    control = await startTestGateway({}, database.url);
  });
  afterAll(async () => {
    await gateway?.stop();
    await control?.stop();
    await vnc?.close();
  });

  it('serves consoles over wss and swaps in a renewed certificate without a restart', async () => {
    expect(gateway.url).toMatch(/^https:/);
    expect((await peerCertificate(portOf(gateway))).subject.CN).toBe('first');

    const ws = new WebSocket(`${gateway.wsUrl.replace('ws:', 'wss:')}?ticket=${await gateway.mint((await control.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id)}`, ['binary'], { rejectUnauthorized: false });
    ws.on('error', () => {});
    await new Promise((resolve, reject) => ws.once('message', resolve).once('close', reject));

    // A renewal written in place: the key first, then the certificate (a torn pair is skipped).
    const second = await makeCertificate(dir, 'second');
    await rename(second.key, keyFile);
    await rename(second.cert, certFile);
    await expect.poll(async () => (await peerCertificate(portOf(gateway))).subject.CN, { timeout: 8_000, interval: 200 }).toBe('second');
    // The console opened before the swap is still live.
    expect(ws.readyState).toBe(WebSocket.OPEN);
    ws.close();
    expect(gateway.logs.some((l) => l.msg === 'TLS certificate reloaded')).toBe(true);
  });

  it('keeps the previous certificate when the new files are not a pair', async () => {
    const before = (await peerCertificate(portOf(gateway))).subject.CN;
    await writeFile(certFile, 'not a certificate\n');
    await expect.poll(() => gateway.logs.some((l) => l.msg === 'TLS certificate reload failed; keeping the previous one'), { timeout: 8_000 }).toBe(true);
    expect((await peerCertificate(portOf(gateway))).subject.CN).toBe(before);
  });
});

describe('TLS behind a PROXY protocol header', () => {
  let gateway: TestGateway;
  beforeAll(async () => {
    const pair = await makeCertificate(dir, 'proxied');
    gateway = await startTestGateway({ TLS_CERT_FILE: pair.cert, TLS_KEY_FILE: pair.key, PROXY_PROTOCOL: 'true' }, database.url);
  });
  afterAll(() => gateway?.stop());

  it('reads the PROXY header, then the TLS handshake on the same connection', async () => {
    const raw = connect({ port: portOf(gateway), host: '127.0.0.1' });
    await new Promise((resolve) => raw.once('connect', resolve));
    raw.write('PROXY TCP4 198.51.100.9 127.0.0.1 41000 443\r\n');
    const status = await new Promise<string>((resolve, reject) => {
      const socket = tlsConnect({ socket: raw, rejectUnauthorized: false }, () => socket.write('GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n'));
      let data = '';
      socket.on('data', (chunk) => (data += chunk));
      socket.on('end', () => resolve(data.split('\r\n')[0]!));
      socket.on('error', reject);
    });
    expect(status).toBe('HTTP/1.1 200 OK');
  });
});
