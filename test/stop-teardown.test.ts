import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';

const HOOK_SCRIPT = fileURLToPath(new URL('./fixtures/hook-script.mjs', import.meta.url));
let gateway: TestGateway;
let dir: string;
let record: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cg-teardown-'));
  record = join(dir, 'calls.jsonl');
  gateway = await startTestGateway({ RUNTIME_HOOK_COMMAND: JSON.stringify([process.execPath, HOOK_SCRIPT, '--record', record]) });
});
afterAll(async () => {
  await gateway?.stop();
  await rm(dir, { recursive: true, force: true });
});

it('stopping a session releases its port and runs the teardown hook with what it held', async () => {
  const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', ownerId: 'owner-secret-123456', target: { host: '127.0.0.1', port: 5999 } });
  const { allocatePort } = await import('../src/db/ports.js');
  const { port } = await allocatePort(gateway.running.store.db, created.body.id, { start: 6100, end: 6999, maxSessions: 800, leaseSeconds: 3600, actor: 'test' });
  expect((await gateway.api('GET', '/api/v1/ports')).body.allocated).toBe(1);
  expect((await gateway.api('DELETE', `/api/v1/sessions/${created.body.id}`)).body.status).toBe('stopped');
  expect((await gateway.api('GET', '/api/v1/ports')).body.allocated).toBe(0);
  // The in-process reconciler's first pass may have asked the hook to `list`: only teardowns count here.
  const calls = (await readFile(record, 'utf8')).trim().split('\n').map((l) => JSON.parse(l)).filter((c) => c.action === 'teardown');
  expect(calls).toEqual([
    expect.objectContaining({
      action: 'teardown',
      session: expect.objectContaining({ sessionId: created.body.id, port, protocol: 'vnc', target: { host: '127.0.0.1', port: 5999, path: null } }),
    }),
  ]);
  expect(gateway.logs.some((l) => l.msg === 'ended session cleaned')).toBe(true);
  expect(gateway.rawLogs()).not.toContain('owner-secret-123456');
});
