// The CLI beside a running embedded `serve`: the operator commands reach it through the admin
// socket in DATA_DIR (mode 0600, no token) and answer the same JSON with the same exit codes.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startServeProcess } from './helpers/cli.js';

const SECRET = 'admin-socket-secret-at-least-32-bytes!!';
const SLOW = 120_000;

describe('operator commands beside a running embedded serve', { timeout: 240_000 }, () => {
  let dataDir: string;
  let env: Record<string, string>;
  let server: Awaited<ReturnType<typeof startServeProcess>>;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'cg-admin-'));
    env = {
      DATA_DIR: dataDir,
      TICKET_SECRET: SECRET,
      PORT: '0',
      HOST: '127.0.0.1',
      PUBLIC_URL: 'https://consoles.example.com',
      TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
      NOVNC_READY_GATING_ENABLED: 'false',
      VNC_WS_PORT_START: '25000',
      VNC_WS_PORT_END: '25000',
      RECONCILIATION_INTERVAL: '3600',
    };
    // The embedded database's first start takes a while on a busy machine.
    server = await startServeProcess(env, SLOW);
  }, SLOW);
  afterAll(async () => {
    if (server !== undefined && server.child.exitCode === null) {
      server.child.kill('SIGTERM');
      await new Promise((r) => server.child.once('exit', r));
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  const cli = (args: string[]) => runCli(args, env, SLOW);
  const json = (stdout: string) => JSON.parse(stdout) as Record<string, any>;

  it('opens the admin socket in DATA_DIR for its own user only', async () => {
    // It opens just after the HTTP listener.
    await expect.poll(() => stat(join(dataDir, 'console-gateway.sock')).then(() => true, () => false), { timeout: 30_000 }).toBe(true);
    const info = await stat(join(dataDir, 'console-gateway.sock'));
    expect(info.isSocket()).toBe(true);
    expect(info.mode & 0o777).toBe(0o600);
    expect(info.uid).toBe(process.getuid!());
  });

  it('runs session, ticket, ports, diagnose and reconcile through the running server', async () => {
    const created = await cli(['session', 'create', '--protocol', 'vnc', '--owner', 'tenant-7']);
    expect(created.code).toBe(0);
    const session = json(created.stdout);
    expect(session).toMatchObject({ status: 'pending', ownerId: 'tenant-7' });

    const targeted = await cli(['session', 'target', session.id, '--host', '127.0.0.1', '--port', '1']);
    expect(json(targeted.stdout)).toMatchObject({ status: 'ready', target: { host: '127.0.0.1', port: 1 } });

    const ticket = json((await cli(['ticket', session.id, '--ttl', '30'])).stdout);
    expect(ticket.consoleUrl).toMatch(/^https:\/\/consoles\.example\.com\/console\?ticket=ey/);

    expect(json((await cli(['ports', 'allocate', session.id])).stdout)).toEqual({ port: 25000, leaseExpiresAt: expect.any(String) });
    const other = json((await cli(['session', 'create', '--protocol', 'vnc'])).stdout);
    const exhausted = await cli(['ports', 'allocate', other.id]);
    expect(exhausted.code).toBe(3);
    expect(exhausted.stderr).toMatch(/^console-gateway: no free console port/);
    expect(json((await cli(['ports', 'list'])).stdout).allocations).toEqual([expect.objectContaining({ port: 25000, sessionId: session.id, status: 'ready' })]);

    // Nothing listens on port 1: the report says so and the exit code is 1, as without a server.
    const diagnosed = await cli(['diagnose', session.id]);
    expect(diagnosed.code).toBe(1);
    expect(json(diagnosed.stdout)).toMatchObject({ healthy: false, session: { id: session.id, owner: '****nant-7', port: 25000 } });

    const reconciled = await cli(['reconcile', '--once', '--dry-run']);
    expect(reconciled.code).toBe(0);
    expect(json(reconciled.stdout)).toMatchObject({ dryRun: true, durationMs: expect.any(Number), rules: expect.any(Object) });

    const stopped = json((await cli(['session', 'stop', session.id])).stdout);
    expect(stopped).toMatchObject({ status: 'stopped', cleanupReason: 'stopped', cleanupCompletedAt: expect.any(String) });
    expect(json((await cli(['ports', 'status'])).stdout)).toMatchObject({ allocated: 0, free: 1 });
    // diagnose tells what the fleet did: cleaned once, by the server's API actor.
    const after = json((await cli(['diagnose', session.id])).stdout);
    expect(after.cleanup).toMatchObject({ reason: 'stopped', completedAt: expect.any(String), attempts: 0 });
    expect(after.audit.filter((a: any) => a.action === 'cleanup')).toEqual([expect.objectContaining({ actor: expect.stringMatching(/^api@/), reason: expect.stringMatching(/^stopped: no runtime hook configured/) })]);

    const bad = await cli(['session', 'stop', 'not-a-uuid']);
    expect(bad.code).toBe(1);
    expect(bad.stderr.trim()).toBe('console-gateway: session id must be a UUID');
    expect(server.output()).toContain('operator command over the admin socket');
  });

  it('three reconcile --once at once: one pass runs, the others report it skipped', async () => {
    const runs = await Promise.all([0, 1, 2].map(() => cli(['reconcile', '--once'])));
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0]);
    const summaries = runs.map((r) => json(r.stdout));
    expect(summaries.filter((s) => s.skipped === undefined).length).toBeGreaterThanOrEqual(1);
    for (const s of summaries.filter((x) => x.skipped !== undefined)) expect(s.skipped).toBe('another reconciler is running a pass');
  });

  it('removes the socket when serve stops; the commands then open the database themselves', async () => {
    server.child.kill('SIGTERM');
    await new Promise((r) => server.child.once('exit', r));
    await expect(stat(join(dataDir, 'console-gateway.sock'))).rejects.toMatchObject({ code: 'ENOENT' });
    const status = await cli(['ports', 'status']);
    expect(status.code).toBe(0);
    expect(json(status.stdout)).toMatchObject({ total: 1, allocated: 0 });
  });
});
