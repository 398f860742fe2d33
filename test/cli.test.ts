import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { CLI, runCli, startServeProcess } from './helpers/cli.js';
import { openConsole } from './helpers/gateway.js';
import { createTestDatabase } from './helpers/postgres.js';

const SECRET = 'cli-test-secret-that-is-at-least-32-bytes';
let dataDir: string;
let env: Record<string, string>;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'cg-cli-'));
  env = { DATA_DIR: dataDir, TICKET_SECRET: SECRET, PUBLIC_URL: 'https://consoles.example.com' };
});
afterAll(() => rm(dataDir, { recursive: true, force: true }));

const json = (stdout: string) => JSON.parse(stdout) as Record<string, any>;
const oneLine = (stderr: string) => stderr.trim().split('\n')[0]!;

describe('console-gateway commands', () => {
  it('creates a session, commits its target, mints a ticket and stops it', async () => {
    const created = await runCli(['session', 'create', '--protocol', 'vnc', '--owner', 'tenant-42'], env);
    expect(created.code).toBe(0);
    const session = json(created.stdout);
    expect(session).toMatchObject({ status: 'pending', protocol: 'vnc', ownerId: 'tenant-42', target: null });

    const target = await runCli(['session', 'target', session.id, '--host', '10.0.0.5', '--port', '5900'], env);
    expect(json(target.stdout)).toMatchObject({ status: 'provisioning', target: { host: '10.0.0.5', port: 5900, path: null } });

    const ticket = await runCli(['ticket', session.id, '--ttl', '30', '--view-only'], env);
    const minted = json(ticket.stdout);
    expect(minted.consoleUrl).toBe(`https://consoles.example.com/console?ticket=${minted.ticket}`);
    const payload = JSON.parse(Buffer.from(minted.ticket.split('.')[1], 'base64url').toString());
    expect(payload).toMatchObject({ sub: session.id, view_only: true });
    expect(payload.exp - payload.iat).toBe(30);

    const stopped = await runCli(['session', 'stop', session.id], env);
    expect(json(stopped.stdout)).toMatchObject({ status: 'stopped' });
  });

  it('commits a websockify target without a web root, and a vnc target on a unix socket', async () => {
    // On PostgreSQL: five commands, each opening the embedded database, would take minutes on CI.
    const database = await createTestDatabase();
    const env = { TICKET_SECRET: SECRET, DATABASE_URL: database.url };
    const ws = await runCli(['session', 'create', '--protocol', 'websockify', '--host', '10.0.0.6', '--port', '5700', '--path', '/', '--no-web-root'], env);
    expect(json(ws.stdout)).toMatchObject({ status: 'provisioning', target: { host: '10.0.0.6', port: 5700, path: '/', webRoot: false } });

    const withDirs = { ...env, TARGET_ALLOWED_SOCKET_DIRS: '/run/cg-test-vms' };
    const vnc = json((await runCli(['session', 'create', '--protocol', 'vnc'], withDirs)).stdout);
    const onSocket = await runCli(['session', 'target', vnc.id, '--socket', '/run/cg-test-vms/vm-1/vnc.sock'], withDirs);
    expect(json(onSocket.stdout)).toMatchObject({ status: 'provisioning', target: { socket: '/run/cg-test-vms/vm-1/vnc.sock' } });

    const disabled = await runCli(['session', 'target', vnc.id, '--socket', '/run/cg-test-vms/vm-1/vnc.sock'], env);
    expect(disabled.code).toBe(1);
    expect(oneLine(disabled.stderr)).toBe('console-gateway: unix-socket targets are disabled: TARGET_ALLOWED_SOCKET_DIRS is empty');
    const mixed = await runCli(['session', 'target', vnc.id, '--socket', '/run/x.sock', '--port', '5900'], withDirs);
    expect(mixed.code).toBe(2);
    expect(oneLine(mixed.stderr)).toBe('console-gateway: --socket stands alone: no --host, --port or --path');
    await database.drop();
  }, 60_000);

  it('leases pool ports, renews a held lease and exits 3 when the pool is exhausted', { timeout: 240_000 }, async () => {
    // Each command opens the embedded database itself: seconds apiece on a busy machine.
    const SLOW = 120_000;
    const ids: string[] = [];
    // One at a time: each command opens the embedded database itself.
    for (let i = 0; i < 3; i++) ids.push(json((await runCli(['session', 'create', '--protocol', 'vnc'], env, SLOW)).stdout).id);
    const small = { ...env, VNC_WS_PORT_START: '7000', VNC_WS_PORT_END: '7001' };
    const first = json((await runCli(['ports', 'allocate', ids[0]!], small, SLOW)).stdout);
    expect(first).toEqual({ port: 7000, leaseExpiresAt: expect.any(String) });
    const renewed = json((await runCli(['ports', 'allocate', ids[0]!], small, SLOW)).stdout);
    expect(renewed.port).toBe(7000);
    expect(Date.parse(renewed.leaseExpiresAt)).toBeGreaterThanOrEqual(Date.parse(first.leaseExpiresAt));
    expect(json((await runCli(['ports', 'allocate', ids[1]!], small, SLOW)).stdout).port).toBe(7001);
    const exhausted = await runCli(['ports', 'allocate', ids[2]!], small, SLOW);
    expect(exhausted.code).toBe(3);
    expect(oneLine(exhausted.stderr)).toMatch(/^console-gateway: no free console port/);
    expect(json((await runCli(['ports', 'status'], small, SLOW)).stdout)).toEqual({ total: 2, allocated: 2, free: 0, utilizationPercent: 100, health: 'critical' });
    const list = json((await runCli(['ports', 'list'], small, SLOW)).stdout);
    expect(list.allocations.map((a: any) => [a.port, a.sessionId, a.status])).toEqual([[7000, ids[0], 'pending'], [7001, ids[1], 'pending']]);
    expect(json((await runCli(['ports', 'release', ids[0]!], small, SLOW)).stdout)).toEqual({ released: true });
    expect(json((await runCli(['ports', 'release', ids[1]!], small, SLOW)).stdout)).toEqual({ released: true });
  });

  it('answers bad input with one clear line and a non-zero exit', async () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['session', 'create', '--protocol', 'rdp'], env, /protocol must be "vnc" or "websockify"/],
      [['session', 'create'], env, /--protocol vnc\|websockify is required/],
      [['session', 'target', 'not-a-uuid', '--host', '10.0.0.1', '--port', '5900'], env, /session id must be a UUID/],
      [['session', 'target', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e', '--host', '127.0.0.1', '--port', '5900'], env, /outside TARGET_ALLOWED_CIDRS/],
      [['ticket', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e'], env, /unknown console session/],
      [['ticket', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e'], { DATA_DIR: dataDir }, /TICKET_SECRET/],
      [['session', 'create', '--protocol', 'vnc', '--bogus'], env, /^console-gateway: session create does not take the option --bogus$/],
      [['frobnicate'], env, /unknown command: frobnicate/],
      [['serve'], { ...env, PORT: 'x', TICKET_SECRET: 'short' }, /PORT must be an integer.*TICKET_SECRET must be at least 32 bytes/],
      [['session', 'create', '--protocol', 'vnc'], { ...env, DATABASE_URL: 'postgresql://nobody@127.0.0.1:1/none' }, /database unreachable: connection refused/],
    ];
    for (const [args, caseEnv, message] of cases) {
      const result = await runCli(args, caseEnv);
      expect({ args, code: result.code }).toEqual({ args, code: expect.any(Number) });
      expect(result.code).not.toBe(0);
      expect(oneLine(result.stderr)).toMatch(message);
      expect(result.stderr).not.toMatch(/\n\s+at /); // no stack traces
      expect(result.stderr).not.toContain(SECRET);
    }
  });

  it('refuses options and arguments a command does not take with one line and exit 2, --once included', { timeout: 120_000 }, async () => {
    const cases: [string[], string][] = [
      [['serve', '--once'], 'serve does not take the option --once'],
      [['gate', '--once'], 'gate does not take the option --once'],
      [['migrate', '--once'], 'migrate does not take the option --once'],
      [['demo', '--once'], 'demo does not take the option --once'],
      [['migrate', 'now'], 'migrate takes no arguments, got "now"'],
      [['ticket', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e', '--once'], 'ticket does not take the option --once'],
      [['ticket', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e', '--protocol', 'vnc'], 'ticket does not take the option --protocol'],
      [['session', 'stop', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e', '--host', '10.0.0.1'], 'session stop does not take the option --host'],
      [['ports', 'status', '--once'], 'ports status does not take the option --once'],
      [['diagnose', '6f1c1bde-9a56-4c1e-9d86-4f4b7b8c9d0e', '--once'], 'diagnose does not take the option --once'],
    ];
    // In parallel: each is refused before any database or listener is opened.
    const results = await Promise.all(cases.map(([args]) => runCli(args, env, 110_000)));
    results.forEach((result, i) => {
      const [args, line] = cases[i]!;
      expect({ args, code: result.code, line: oneLine(result.stderr) }).toEqual({ args, code: 2, line: `console-gateway: ${line}` });
      expect(result.stdout).toBe('');
    });
  });

  it('demo prints a console URL whose ticket opens the demo VNC server through the gateway', async () => {
    const demoDir = await mkdtemp(join(tmpdir(), 'cg-demo-'));
    const child = spawn(process.execPath, [CLI, 'demo'], { env: { PATH: process.env.PATH ?? '', DATA_DIR: demoDir, PORT: '0', HOST: '127.0.0.1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let output = '';
      child.stdout.on('data', (d) => (output += d));
      child.stderr.on('data', (d) => (output += d));
      await expect.poll(() => /Open the console: (\S+)/.exec(output)?.[1], { timeout: 30_000 }).toBeDefined();
      const consoleUrl = new URL(/Open the console: (\S+)/.exec(output)![1]!);
      expect(consoleUrl.pathname).toBe('/console');
      const page = await fetch(consoleUrl);
      expect(page.status).toBe(200);
      const wsUrl = `ws://${consoleUrl.host}/websockify?ticket=${consoleUrl.searchParams.get('ticket')}`;
      const outcome = await openConsole(wsUrl, { untilMessages: 1 });
      expect(outcome.messages[0]?.toString()).toBe('RFB 003.008\n');
      // The session went through the readiness gate (enabled by default) before the URL was printed.
      expect(output).toMatch(/readiness probe succeeded/);
      // Its console cap fits any open-file limit: a new user meets no warning about it.
      expect(output).not.toContain('MAX_CONSOLES does not fit');
      // The link is printed for the person who ran the demo; no log line carries the ticket.
      const signature = consoleUrl.searchParams.get('ticket')!.split('.')[2]!;
      for (const line of output.split('\n').filter((l) => l.startsWith('{'))) expect(line).not.toContain(signature);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      await rm(demoDir, { recursive: true, force: true });
    }
  });

  it('refuses commands that need the database itself (migrate) while another process holds the embedded one', { timeout: 240_000 }, async () => {
    const serveDir = await mkdtemp(join(tmpdir(), 'cg-cli-serve-'));
    const server = await startServeProcess({ DATA_DIR: serveDir, TICKET_SECRET: SECRET, PORT: '0', HOST: '127.0.0.1' }, 120_000);
    try {
      // Operator commands reach the running server through its admin socket (test/admin-socket.test.ts).
      const result = await runCli(['migrate'], { ...env, DATA_DIR: serveDir }, 120_000);
      expect(result.code).toBe(1);
      expect(oneLine(result.stderr)).toMatch(new RegExp(`in use by process ${server.child.pid}`));
    } finally {
      server.child.kill('SIGTERM');
      await new Promise((r) => server.child.once('exit', r));
      await rm(serveDir, { recursive: true, force: true });
    }
  });
});
