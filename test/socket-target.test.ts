// Unix-socket VNC targets: resolve the path, check the real directory against
// TARGET_ALLOWED_SOCKET_DIRS, dial only the checked path. Bait sockets outside the allowed
// directory count every connection, so "refused and never dialled" is observed, not assumed.
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { resolveSocketTarget } from '../src/console/socket-target.js';
import { probeSession } from '../src/fleet/probe.js';
import { openConsole, startTestGateway, TEST_ENV, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

interface Bait {
  path: string;
  connections: number;
  server: Server;
}

let dir: string;
let allowed: string;
let outside: string;
const baits: Bait[] = [];

/** A listening unix socket that answers like a VNC server and counts who dialled it. */
async function bait(path: string): Promise<Bait> {
  const found: Bait = { path, connections: 0, server: createServer() };
  found.server.on('connection', (socket) => {
    found.connections++;
    socket.end('RFB 003.008\n');
  });
  await new Promise<void>((resolve) => found.server.listen(path, resolve));
  baits.push(found);
  return found;
}

let inside: Bait; // allowed/vm-1/vnc.sock
let secret: Bait; // outside/vnc.sock

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cg-sockets-'));
  allowed = join(dir, 'allowed');
  outside = join(dir, 'outside');
  await mkdir(join(allowed, 'vm-1'), { recursive: true });
  await mkdir(outside);
  inside = await bait(join(allowed, 'vm-1', 'vnc.sock'));
  secret = await bait(join(outside, 'vnc.sock'));
  await symlink(secret.path, join(allowed, 'escape.sock')); // a socket-named symlink that leaves
  await symlink(outside, join(allowed, 'escape-dir')); // a directory symlink that leaves
  await symlink(inside.path, join(allowed, 'alias.sock')); // a symlink that stays inside
  await symlink(allowed, join(dir, 'allowed-link')); // the allowed directory under another name
  await writeFile(join(allowed, 'plain-file'), 'not a socket');
});

afterAll(async () => {
  await Promise.all(baits.map((b) => new Promise((resolve) => b.server.close(resolve))));
  await rm(dir, { recursive: true, force: true });
});

const refusal = (path: string, dirs: string[] = [allowed]) =>
  resolveSocketTarget(path, dirs).then(
    () => undefined,
    (error: { code: string; message: string }) => ({ code: error.code, message: error.message }),
  );

describe('resolveSocketTarget', () => {
  it('refuses every socket while TARGET_ALLOWED_SOCKET_DIRS is empty', async () => {
    expect(await refusal(inside.path, [])).toEqual({
      code: 'TARGET_FORBIDDEN',
      message: 'unix-socket targets are disabled: TARGET_ALLOWED_SOCKET_DIRS is empty',
    });
  });

  it('refuses a path outside the allowed directories, also through ..', async () => {
    const outsideMessage = { code: 'TARGET_FORBIDDEN', message: 'the VM console socket is outside TARGET_ALLOWED_SOCKET_DIRS' };
    expect(await refusal(secret.path)).toEqual(outsideMessage);
    expect(await refusal(join(allowed, '..', 'outside', 'vnc.sock'))).toEqual(outsideMessage);
    // Outside, a missing directory is refused too: no telling which of the host's paths exist.
    expect(await refusal(join(dir, 'nowhere', 'vnc.sock'))).toEqual(outsideMessage);
    expect(await refusal('relative/vnc.sock')).toMatchObject({ code: 'TARGET_FORBIDDEN' });
  });

  it('refuses a symlink inside that leads outside, as a socket name or as a directory', async () => {
    const escape = { code: 'TARGET_FORBIDDEN', message: 'the VM console socket leads through a symlink outside TARGET_ALLOWED_SOCKET_DIRS' };
    expect(await refusal(join(allowed, 'escape.sock'))).toEqual(escape);
    expect(await refusal(join(allowed, 'escape-dir', 'vnc.sock'))).toEqual(escape);
    expect(secret.connections).toBe(0);
  });

  it('returns the real path to dial, for a symlink that stays inside and for an allowed directory named through a symlink', async () => {
    expect(await resolveSocketTarget(join(allowed, 'alias.sock'), [allowed])).toBe(inside.path);
    expect(await resolveSocketTarget(inside.path, [join(dir, 'allowed-link')])).toBe(inside.path);
    expect(await resolveSocketTarget(join(dir, 'allowed-link', 'vm-1', 'vnc.sock'), [allowed])).toBe(inside.path);
  });

  it('answers DIAL_FAILED, not a refusal, for a socket that is not there yet or is not a socket', async () => {
    expect(await refusal(join(allowed, 'vm-2', 'vnc.sock'))).toEqual({ code: 'DIAL_FAILED', message: 'the directory of the VM console socket does not exist' });
    expect(await refusal(join(allowed, 'vm-1', 'later.sock'))).toEqual({ code: 'DIAL_FAILED', message: 'the VM console socket does not exist (yet)' });
    expect(await refusal(join(allowed, 'plain-file'))).toEqual({ code: 'DIAL_FAILED', message: 'the VM console path is not a unix socket' });
  });
});

describe('unix-socket targets through the gateway', () => {
  let database: TestDatabase;
  let gateway: TestGateway;

  beforeAll(async () => {
    database = await createTestDatabase();
    // No reconciler: its pass probes every ready session's socket, and a probe landing during a
    // test would count as one more dial of the bait.
    gateway = await startTestGateway({ TARGET_ALLOWED_SOCKET_DIRS: allowed, RECONCILIATION_ENABLED: 'false' }, database.url);
  }, 60_000);
  afterAll(async () => {
    await gateway?.stop();
    await database?.drop();
  });

  const create = (body: unknown) => gateway.api('POST', '/api/v1/sessions', body);

  it('accepts a socket inside the allowed directory, even before the VM has created it', async () => {
    const now = await create({ protocol: 'vnc', target: { socket: inside.path } });
    expect(now.status).toBe(201);
    expect(now.body.target).toEqual({ socket: inside.path });
    const later = await create({ protocol: 'vnc', target: { socket: join(allowed, 'vm-9', 'vnc.sock') } });
    expect(later.status).toBe(201);
  });

  it('answers bad socket targets with 400 or 403 and a reason', async () => {
    const cases: [unknown, number, RegExp][] = [
      [{ protocol: 'vnc', target: { socket: secret.path } }, 403, /is outside TARGET_ALLOWED_SOCKET_DIRS/],
      [{ protocol: 'vnc', target: { socket: join(allowed, 'escape.sock') } }, 403, /through a symlink outside/],
      [{ protocol: 'vnc', target: { socket: 'vnc.sock' } }, 400, /absolute path/],
      [{ protocol: 'vnc', target: { socket: `/${'x'.repeat(120)}` } }, 400, /at most 107 bytes/],
      [{ protocol: 'vnc', target: { socket: inside.path, host: '127.0.0.1' } }, 400, /target.socket stands alone: drop target.host/],
      [{ protocol: 'websockify', target: { socket: inside.path } }, 400, /needs a vnc session/],
      [{ protocol: 'vnc', target: { host: '127.0.0.1', port: 5900, webRoot: false } }, 400, /webRoot applies to websockify targets only/],
      [{ protocol: 'websockify', target: { host: '127.0.0.1', port: 5900, webRoot: 'no' } }, 400, /webRoot must be true or false/],
    ];
    for (const [body, status, message] of cases) {
      const answer = await create(body);
      expect(answer.status, JSON.stringify(body)).toBe(status);
      expect(answer.body.error.message).toMatch(message);
    }
    expect(secret.connections).toBe(0);
  });

  it('pipes a console to an allowed socket, dialling the real path behind an inside symlink', async () => {
    const before = inside.connections;
    const id = (await create({ protocol: 'vnc', target: { socket: join(allowed, 'alias.sock') } })).body.id;
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, { untilMessages: 1 });
    expect(Buffer.concat(outcome.messages).toString()).toBe('RFB 003.008\n');
    expect(inside.connections).toBe(before + 1);
  });

  it('refuses with 4403, and never dials, a socket outside or a symlink leaving it that a backend wrote with plain SQL', async () => {
    for (const socket of [secret.path, join(allowed, 'escape.sock'), join(allowed, 'escape-dir', 'vnc.sock')]) {
      const id = (await create({ protocol: 'vnc' })).body.id;
      await sql`update console_sessions set target_socket = ${socket}, status = 'ready' where id = ${id}`.execute(gateway.running.store.db);
      const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`);
      expect(outcome.code, socket).toBe(4403);
      expect(outcome.reason).toMatch(/TARGET_ALLOWED_SOCKET_DIRS$/);
    }
    expect(secret.connections).toBe(0);
  });

  it('fails such a target at the first readiness probe, without dialling it', async () => {
    const config = loadConfig({ ...TEST_ENV, TARGET_ALLOWED_SOCKET_DIRS: allowed });
    const options = { allowed: config.targetAllowedCidrs, socketDirs: config.targetAllowedSocketDirs, readyPaths: config.readyPaths, attemptTimeoutMs: 1_000 };
    expect(await probeSession({ socket: join(allowed, 'escape.sock') }, 'vnc', options)).toMatchObject({ ok: false, forbidden: true });
    expect(await probeSession({ socket: inside.path }, 'vnc', options)).toMatchObject({ ok: true });
    expect(await probeSession({ socket: inside.path }, 'vnc', { ...options, socketDirs: [] })).toMatchObject({ ok: false, forbidden: true });
    expect(secret.connections).toBe(0);
  });

  it('keeps the socket check in the database for rows written by hand', async () => {
    const id = (await create({ protocol: 'websockify' })).body.id;
    await expect(sql`update console_sessions set target_socket = ${inside.path} where id = ${id}`.execute(gateway.running.store.db)).rejects.toThrow(
      /console_sessions_socket_target/,
    );
    const vnc = (await create({ protocol: 'vnc' })).body.id;
    await sql`update console_sessions set target_socket = ${inside.path} where id = ${vnc}`.execute(gateway.running.store.db);
    // Committing a socket moves a pending session on, as committing an address does; with gating
    // off, on to ready.
    await expect.poll(async () => (await gateway.api('GET', `/api/v1/sessions/${vnc}`)).body, { timeout: 10_000 }).toMatchObject({
      status: 'ready',
      target: { socket: inside.path },
    });
  });
});
