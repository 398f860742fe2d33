import { mkdtemp } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { diagnose } from '../src/control/diagnose.js';
import { migrateToLatest } from '../src/db/migrations.js';
import { openStore, type Store } from '../src/db/open.js';
import { sql } from 'kysely';
import { createSession } from '../src/db/sessions.js';
import { startDemoVncServer } from '../src/demo/demo-vnc.js';
import { createLogger } from '../src/ops/log.js';
import { createRuntimeHook } from '../src/fleet/runtime-hook.js';

const HOOK_SCRIPT = fileURLToPath(new URL('./fixtures/hook-script.mjs', import.meta.url));
const SECRET = 'diagnose-test-ticket-secret-32-bytes-long';
const OWNER = 'customer-42-owner-id-abc123';
const log = createLogger('silent');
const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(env: Record<string, string> = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'cg-diagnose-'));
  const config = loadConfig({ DATA_DIR: dir, PORT: '8099', TARGET_ALLOWED_CIDRS: '127.0.0.1/32', TICKET_SECRET: SECRET, ...env });
  const store: Store = await openStore({ databaseUrl: undefined, dataDir: dir, log });
  cleanups.push(() => store.close());
  await migrateToLatest(store.db);
  return { config, store };
}

describe('diagnose', { timeout: 15_000 }, () => {
  it('reports a ready session whose console answers as healthy, redacted throughout', async () => {
    const { config, store } = await setup({ PUBLIC_URL: 'https://consoles.example' });
    const vnc = await startDemoVncServer();
    cleanups.push(() => vnc.close());
    const session = await createSession(store.db, { protocol: 'vnc', ownerId: OWNER, target: { host: '127.0.0.1', port: vnc.port, path: null }, gatingEnabled: false });
    process.env.LEAKED_SECRET = SECRET;
    cleanups.push(() => void delete process.env.LEAKED_SECRET);
    const hook = createRuntimeHook([process.execPath, HOOK_SCRIPT, '--mode', 'leak'], 10_000, log, { secrets: [SECRET] });

    const { healthy, report } = await diagnose({ db: store.db, config, hook, secrets: [SECRET] }, session.id);

    expect(healthy).toBe(true);
    expect(report).toMatchObject({
      healthy: true,
      session: { id: session.id, status: 'ready', protocol: 'vnc', owner: '****abc123', target: { host: '127.0.0.1', port: vnc.port } },
      expectedConsoleUrl: 'https://consoles.example/console?ticket=<minted by your platform>',
      probe: { ok: true, elapsedMs: expect.any(Number) },
      runtime: { ok: true, output: expect.stringContaining('--- ps ---') },
    });
    const text = JSON.stringify(report);
    for (const leaked of [OWNER, SECRET, 'hunter2', 'eyJhbGciOiJIUzI1NiJ9']) expect(text).not.toContain(leaked);
  });

  it('reports a failed session as unhealthy with its stored reason and diagnostics, and a failing live probe', async () => {
    const { config, store } = await setup();
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    await new Promise((resolve) => server.close(resolve));
    const session = await createSession(store.db, { protocol: 'vnc', ownerId: OWNER, target: { host: '127.0.0.1', port, path: null }, gatingEnabled: true });
    const diagnostics = JSON.stringify({ runtime: { output: `vnc exited(1) for ${OWNER}; password=hunter2 secret ${SECRET}` } });
    await sql`update console_sessions set status = 'failed', failure_reason = 'not ready after 120.0 s: TCP connect refused',
      diagnostics = ${diagnostics}::jsonb where id = ${session.id}`.execute(store.db);

    const { healthy, report } = await diagnose({ db: store.db, config, secrets: [SECRET] }, session.id);

    expect(healthy).toBe(false);
    expect(report).toMatchObject({
      verdict: 'failed: see failureReason and storedDiagnostics',
      expectedConsoleUrl: 'http://localhost:8099/console?ticket=<minted by your platform>',
      session: { status: 'failed', finishedAt: expect.any(String) },
      probe: { ok: false, reason: 'TCP connect refused' },
      failureReason: 'not ready after 120.0 s: TCP connect refused',
      runtime: { skipped: 'no runtime hook configured (RUNTIME_HOOK_COMMAND)' },
    });
    expect((report.storedDiagnostics as any).runtime.output).toBe('vnc exited(1) for ****abc123; password=[redacted] secret [redacted]');
    expect(JSON.stringify(report)).not.toContain(OWNER);
  });

  it('skips the probe of a session without a target', async () => {
    const { config, store } = await setup();
    const session = await createSession(store.db, { protocol: 'websockify', gatingEnabled: true });
    const { healthy, report } = await diagnose({ db: store.db, config }, session.id);
    expect(healthy).toBe(false);
    expect(report).toMatchObject({ probe: { skipped: 'no target committed yet' }, session: { status: 'pending', owner: null } });
  });

  it('refuses an unknown session', async () => {
    const { config, store } = await setup();
    await expect(diagnose({ db: store.db, config }, '00000000-0000-4000-8000-000000000000')).rejects.toMatchObject({ code: 'SESSION_NOT_FOUND' });
    await expect(diagnose({ db: store.db, config }, 'not-a-uuid')).rejects.toMatchObject({ code: 'SESSION_NOT_FOUND' });
  });
});
