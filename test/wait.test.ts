import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../src/db/open.js';
import { migrateToLatest } from '../src/db/migrations.js';
import { createSession, commitTarget } from '../src/db/sessions.js';
import { SessionEvents } from '../src/db/events.js';
import { createLogger } from '../src/ops/log.js';
import { waitForSession } from '../src/console/wait.js';
import { GatewayError } from '../src/errors.js';

let store: Store;
let dir: string;
const NEVER = 3_600_000;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cg-wait-'));
  store = await openStore({ databaseUrl: undefined, dataDir: dir, log: createLogger('silent'), listen: true });
  await migrateToLatest(store.db);
});
afterAll(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const pending = async () => (await createSession(store.db, { protocol: 'vnc', gatingEnabled: true })).id;
const commitLater = (id: string, ms: number, gating = false) =>
  setTimeout(() => void commitTarget(store.db, id, { host: '10.0.0.1', port: 5900, path: null }, gating), ms);

describe('waiting for the VM address', () => {
  it('is woken by the database NOTIFY, not by polling', async () => {
    const id = await pending();
    commitLater(id, 300);
    // The first poll would come after an hour: only the trigger's notification can wake this.
    const row = await waitForSession(store.db, store.events, id, { budgetMs: NEVER, gatingEnabled: false, pollMinMs: NEVER });
    expect(row.status).toBe('ready');
  });

  it('falls back to polling when notifications are lost', async () => {
    const id = await pending();
    commitLater(id, 300);
    const deaf = new SessionEvents();
    const row = await waitForSession(store.db, deaf, id, { budgetMs: 10_000, gatingEnabled: false, pollMinMs: 100, pollMaxMs: 200 });
    expect(row.target_host).toBe('10.0.0.1');
  });

  it('re-reads the session when the LISTEN connection is re-established', async () => {
    const id = await pending();
    const deaf = new SessionEvents();
    const waiting = waitForSession(store.db, deaf, id, { budgetMs: NEVER, gatingEnabled: false, pollMinMs: NEVER });
    await commitTarget(store.db, id, { host: '10.0.0.1', port: 5900, path: null }, false);
    deaf.emit('resync');
    await expect(waiting).resolves.toMatchObject({ status: 'ready' });
  });

  it('treats a provisioning session as connectable only when gating is disabled', async () => {
    const id = await pending();
    await commitTarget(store.db, id, { host: '10.0.0.1', port: 5900, path: null }, true);
    await expect(waitForSession(store.db, store.events, id, { budgetMs: 10_000, gatingEnabled: false })).resolves.toMatchObject({ status: 'provisioning' });
    const error = await waitForSession(store.db, store.events, id, { budgetMs: 300, gatingEnabled: true }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'WAIT_TIMEOUT', closeCode: 1013, message: expect.stringMatching(/did not become ready within/) });
  });

  it('times out with WAIT_TIMEOUT when the address never comes', async () => {
    const id = await pending();
    const error = await waitForSession(store.db, store.events, id, { budgetMs: 400, gatingEnabled: false }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GatewayError);
    expect(error).toMatchObject({ code: 'WAIT_TIMEOUT', message: expect.stringMatching(/not committed/) });
  });

  it('stops waiting when the browser leaves', async () => {
    const id = await pending();
    const controller = new AbortController();
    const waiting = waitForSession(store.db, store.events, id, { budgetMs: NEVER, gatingEnabled: false, signal: controller.signal, pollMinMs: NEVER });
    setTimeout(() => controller.abort(new Error('gone')), 100);
    await expect(waiting).rejects.toThrow('gone');
    expect(store.events.listenerCount('change')).toBe(0);
  });
});
