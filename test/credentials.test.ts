// VNC credentials stored with the target: sealed at rest, never answered, and used by the gateway
// itself against a real password-protected TigerVNC (security None towards the client).
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, ConfigError } from '../src/config.js';
import { openCredentials, sealCredentials } from '../src/console/credentials.js';
import { vncAuthResponse } from '../src/console/rfb-auth.js';
import { diagnose } from '../src/control/diagnose.js';
import { spawn } from 'node:child_process';
import { CLI, runCli } from './helpers/cli.js';
import { TEST_ENV, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { handshakeAsBrowser, openSocket } from './helpers/rfb-client.js';
import { startXvnc, type Xvnc } from './helpers/xvnc.js';

const PASSWORD = 'k3y-Pass';
const KEY = randomBytes(32).toString('base64');
const ID = '7d0c7e8e-5a43-4f0e-9d51-3f5b1c2a9e10';

describe('sealed credentials', () => {
  const key = randomBytes(32);
  it('open only with the key and for the session they were sealed for', () => {
    const sealed = sealCredentials(key, ID, { password: PASSWORD });
    expect(sealed).not.toContain(PASSWORD);
    expect(openCredentials(key, ID, sealed)).toEqual({ password: PASSWORD });
    expect(() => openCredentials(randomBytes(32), ID, sealed)).toThrow(/CREDENTIALS_KEY differs/);
    expect(() => openCredentials(key, '00000000-0000-4000-8000-000000000000', sealed)).toThrow(/CREDENTIALS_KEY differs/);
    expect(() => openCredentials(undefined, ID, sealed)).toThrow(/no CREDENTIALS_KEY/);
    expect(openCredentials(key, ID, null)).toBeUndefined();
  });

  it('refuse to seal without a key', () => {
    expect(() => sealCredentials(undefined, ID, { password: PASSWORD })).toThrow(/set CREDENTIALS_KEY/);
  });

  it('answer a VNC challenge as DES with the bit-mirrored key (the d3des test vector)', () => {
    // These password bytes mirror to the key 0123456789abcdef: single DES of FIPS 81's "Now is t".
    const password = Buffer.from([0x80, 0xc4, 0xa2, 0xe6, 0x91, 0xd5, 0xb3, 0xf7]).toString('latin1');
    const response = vncAuthResponse(password, Buffer.from('4e6f772069732074' + '4e6f772069732074', 'hex'));
    expect(response.toString('hex')).toBe('3fa40e8a984d4815'.repeat(2));
  });

  it('CREDENTIALS_KEY must be 32 bytes of base64, reported without its value', () => {
    expect(loadConfig({ CREDENTIALS_KEY: KEY }).credentialsKey).toHaveLength(32);
    const short = randomBytes(16).toString('base64');
    try {
      loadConfig({ CREDENTIALS_KEY: short, PORT: 'x' });
      expect.unreachable();
    } catch (error) {
      expect((error as ConfigError).problems).toContain('CREDENTIALS_KEY must be 32 bytes in base64 (openssl rand -base64 32), got 16 bytes');
      expect((error as Error).message).not.toContain(short);
      expect((error as ConfigError).problems.length).toBe(2);
    }
  });
});

describe('a VM whose VNC password is stored with the target', () => {
  let database: TestDatabase;
  let gateway: TestGateway;
  let keyless: TestGateway;
  let xvnc: Xvnc;
  let dataDir: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    [gateway, keyless, xvnc] = await Promise.all([
      startTestGateway({ CREDENTIALS_KEY: KEY }, database.url),
      startTestGateway({}, database.url),
      startXvnc({ password: PASSWORD }),
    ]);
    dataDir = await mkdtemp(join(tmpdir(), 'cg-cred-'));
  }, 60_000);
  afterAll(async () => {
    await Promise.all([gateway?.stop(), keyless?.stop(), xvnc?.close()]);
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  const create = (g: TestGateway, password: string, protocol = 'vnc') =>
    g.api('POST', '/api/v1/sessions', { protocol, target: { host: '127.0.0.1', port: xvnc.port, credentials: { password } } });

  it('refuses to store credentials without CREDENTIALS_KEY, with a reason', async () => {
    const res = await create(keyless, PASSWORD);
    expect(res.status).toBe(400);
    expect(res.body.error.message).toBe('this gateway cannot store console credentials: set CREDENTIALS_KEY (32 bytes, base64)');
  });

  it('refuses credentials on a websockify session and bad credential shapes', async () => {
    expect((await create(gateway, PASSWORD, 'websockify')).body.error.message).toMatch(/need a vnc session/);
    const bad = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: 1, credentials: { password: '' } } });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toMatch(/password must be a string/);
  });

  it('stores them sealed and never answers them', async () => {
    const created = await create(gateway, PASSWORD);
    expect(created.status).toBe(201);
    expect(created.body.target).toEqual({ host: '127.0.0.1', port: xvnc.port, path: null, credentials: { stored: true } });
    const read = await gateway.api('GET', `/api/v1/sessions/${created.body.id}`);
    expect(JSON.stringify(read.body)).not.toContain(PASSWORD);
    expect(read.body.target.credentials).toEqual({ stored: true });
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      const { rows } = await client.query('select target_credentials from console_sessions where id = $1', [created.body.id]);
      expect(rows[0].target_credentials).toMatch(/^v1\./);
      expect(rows[0].target_credentials).not.toContain(PASSWORD);
    } finally {
      await client.end();
    }
    // A new target without credentials replaces them.
    const retargeted = await gateway.api('PUT', `/api/v1/sessions/${created.body.id}/target`, { host: '127.0.0.1', port: xvnc.port });
    expect(retargeted.body.target.credentials).toBeUndefined();
  });

  it('authenticates to the VM itself and offers the client security None only', async () => {
    const id = (await create(gateway, PASSWORD)).body.id;
    const { ws, io } = await openSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`);
    const init = await handshakeAsBrowser(io);
    expect(init).toEqual({ width: 800, height: 600, name: 'console-gateway-test', offered: [1] });
    ws.close();
    expect(gateway.rawLogs()).not.toContain(PASSWORD);
  });

  it('keeps a view-only console working: handshake done by the gateway, the filter starts at ClientInit', async () => {
    const id = (await create(gateway, PASSWORD)).body.id;
    const { ticket } = (await gateway.api('POST', `/api/v1/sessions/${id}/tickets`, { viewOnly: true })).body;
    const { ws, io } = await openSocket(`${gateway.wsUrl}?ticket=${ticket}`);
    expect((await handshakeAsBrowser(io)).width).toBe(800);
    // Key input goes nowhere (the filter parses from ClientInit on); an update request is answered.
    io.write(Buffer.from([4, 1, 0, 0, 0, 0, 0, 0x61]));
    io.write(Buffer.from([3, 0, 0, 0, 0, 0, 0, 16, 0, 16]));
    expect((await io.read(1))[0]).toBe(0); // FramebufferUpdate
    ws.close();
  });

  it('closes with 4502 and a reason when the VM refuses the stored password', async () => {
    const id = (await create(gateway, 'wrong-pw')).body.id;
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`);
    expect(outcome.messages).toHaveLength(0);
    expect([outcome.code, outcome.reason]).toEqual([4502, 'the VM refused the stored console credentials']);
    expect(gateway.rawLogs()).not.toContain('wrong-pw');
  });

  it('a gateway without the key closes such a console with 1011 and says why', async () => {
    const id = (await create(gateway, PASSWORD)).body.id;
    const outcome = await openConsole(`${keyless.wsUrl}?ticket=${await keyless.mint(id)}`);
    expect([outcome.code, outcome.reason]).toEqual([1011, 'the session has stored console credentials but this gateway has no CREDENTIALS_KEY']);
    expect(keyless.rawLogs()).not.toContain(PASSWORD);
  });

  it('the readiness gate and diagnose authenticate with them', async () => {
    // A database of its own: the other gateways here run with gating off and would promote its sessions.
    const own = await createTestDatabase();
    const gated = await startTestGateway(
      { CREDENTIALS_KEY: KEY, NOVNC_READY_GATING_ENABLED: 'true', NOVNC_READY_POLL_INTERVAL_SECONDS: '0.2', NOVNC_READY_TIMEOUT_SECONDS: '3' },
      own.url,
    );
    try {
      const good = (await create(gated, PASSWORD)).body.id;
      const bad = (await create(gated, 'wrong-pw')).body.id;
      const status = async (id: string) => (await gated.api('GET', `/api/v1/sessions/${id}`)).body;
      await expect.poll(async () => (await status(good)).status, { timeout: 15_000 }).toBe('ready');
      await expect.poll(async () => (await status(bad)).status, { timeout: 15_000 }).toBe('failed');
      expect((await status(bad)).failureReason).toContain('the VM refused the stored console credentials');

      const config = loadConfig({ ...TEST_ENV, DATABASE_URL: own.url, CREDENTIALS_KEY: KEY });
      const healthy = await diagnose({ db: gated.running.store.db, config }, good);
      expect(healthy.report.probe).toMatchObject({ ok: true });
      const refused = await diagnose({ db: gated.running.store.db, config }, bad);
      expect(refused.report.probe).toMatchObject({ ok: false, reason: 'the VM refused the stored console credentials' });
      expect(JSON.stringify([healthy.report, refused.report])).not.toMatch(/k3y-Pass|wrong-pw/);
      expect(gated.rawLogs()).not.toMatch(/k3y-Pass|wrong-pw/);
    } finally {
      await gated.stop();
      await own.drop();
    }
  }, 40_000);

  it('the CLI reads the password from a file or stdin, never argv', async () => {
    const file = join(dataDir, 'vnc-password');
    await writeFile(file, `${PASSWORD}\n`, { mode: 0o600 });
    const env = { DATABASE_URL: database.url, TICKET_SECRET: TEST_ENV.TICKET_SECRET!, CREDENTIALS_KEY: KEY, TARGET_ALLOWED_CIDRS: '127.0.0.1/32' };
    const created = await runCli(['session', 'create', '--protocol', 'vnc', '--host', '127.0.0.1', '--port', String(xvnc.port), '--password-file', file], env);
    expect(created.code).toBe(0);
    const session = JSON.parse(created.stdout);
    expect(session.target.credentials).toEqual({ stored: true });
    expect(created.stdout + created.stderr).not.toContain(PASSWORD);
    const { ws, io } = await openSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(session.id)}`);
    expect((await handshakeAsBrowser(io)).name).toBe('console-gateway-test');
    ws.close();

    const missing = await runCli(['session', 'target', session.id, '--host', '127.0.0.1', '--port', '1', '--password-file', join(dataDir, 'nope')], env);
    expect(missing.code).toBe(2);
    expect(missing.stderr.split('\n')[0]).toBe(`console-gateway: --password-file ${join(dataDir, 'nope')} cannot be read (ENOENT)`);

    const child = spawn(process.execPath, [CLI, 'session', 'target', session.id, '--host', '127.0.0.1', '--port', String(xvnc.port), '--password-stdin'], {
      env: { PATH: process.env.PATH ?? '', ...env },
    });
    let stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stdin.end('wrong-pw\n');
    expect(await new Promise((r) => child.on('close', r))).toBe(0);
    expect(JSON.parse(stdout).target.credentials).toEqual({ stored: true });
    const refused = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(session.id)}`);
    expect(refused.code).toBe(4502);
  });
});
