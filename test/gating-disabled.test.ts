// With NOVNC_READY_GATING_ENABLED=false a committed target is ready at once, however it was
// committed: through the API, with plain SQL from another process while the gateway runs, or with
// plain SQL while no gateway ran. Both paths end in the same state, and replicas promote once.
import { spawn } from 'node:child_process';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrateToLatest } from '../src/db/migrations.js';
import { openStore } from '../src/db/open.js';
import { createLogger } from '../src/ops/log.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let database: TestDatabase;
let a: TestGateway;
let b: TestGateway;
const EARLY = '6f1c2b1e-0000-4000-8000-00000000e001';

beforeAll(async () => {
  database = await createTestDatabase();
  // A session a backend committed with plain SQL before any gateway was running.
  const store = await openStore({ databaseUrl: database.url, dataDir: '', log: createLogger('silent') });
  await migrateToLatest(store.db);
  await store.close();
  await psql(`insert into console_sessions (id, protocol, target_host, target_port) values ('${EARLY}', 'vnc', '127.0.0.1', 5901)`);
  // Two replicas with gating disabled (the test environment's default), each running its gate.
  a = await startTestGateway({ NOVNC_READY_GATING_ENABLED: 'false' }, database.url);
  b = await startTestGateway({ NOVNC_READY_GATING_ENABLED: 'false' }, database.url);
});
afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await database?.drop();
});

/** Runs SQL in a separate OS process, as a VM backend would. */
function psql(statement: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('psql', [database.url, '-v', 'ON_ERROR_STOP=1', '-qc', statement], { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}`))));
  });
}

const statusOf = async (id: string) => (await a.api('GET', `/api/v1/sessions/${id}`)).body;
const promotions = async () => {
  let total = 0;
  for (const gateway of [a, b]) total += (await gateway.running.metrics.sessionTransitions.get()).values.find((v) => v.labels.to === 'ready')?.value ?? 0;
  return total;
};

async function stateRow(id: string) {
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  try {
    const { rows } = await client.query(
      'select status, ready_at is not null as has_ready_at, probe_owner, probe_lease_until from console_sessions where id = $1',
      [id],
    );
    return rows[0];
  } finally {
    await client.end();
  }
}

describe('readiness gating disabled', () => {
  it('makes a session ready when its target is committed through the API', async () => {
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).body.id;
    const committed = await a.api('PUT', `/api/v1/sessions/${id}/target`, { host: '127.0.0.1', port: 5901 });
    expect(committed.body).toMatchObject({ status: 'ready', readyAt: expect.any(String) });
  });

  it('makes a session ready when its target is committed with plain SQL from another process, once across replicas', async () => {
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).body.id;
    const before = await promotions();
    await psql(`update console_sessions set target_host = '127.0.0.1', target_port = 5901, status = 'provisioning' where id = '${id}'`);
    await expect.poll(async () => (await statusOf(id)).status, { timeout: 10_000 }).toBe('ready');
    expect((await statusOf(id)).readyAt).not.toBeNull();
    // Both replicas heard the NOTIFY; the conditional update let one of them promote it.
    await new Promise((r) => setTimeout(r, 500));
    expect(await promotions()).toBe(before + 1);
  });

  it('leaves the API and SQL paths in the same state', async () => {
    const viaApi = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: 5901 } })).body.id;
    const viaSql = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).body.id;
    await psql(`update console_sessions set target_host = '127.0.0.1', target_port = 5901 where id = '${viaSql}'`);
    await expect.poll(async () => (await statusOf(viaSql)).status, { timeout: 10_000 }).toBe('ready');
    expect(await stateRow(viaSql)).toEqual(await stateRow(viaApi));
    expect(await stateRow(viaApi)).toEqual({ status: 'ready', has_ready_at: true, probe_owner: null, probe_lease_until: null });
  });

  it('makes ready a session committed with plain SQL while no gateway was running', async () => {
    await expect.poll(async () => (await statusOf(EARLY)).status, { timeout: 10_000 }).toBe('ready');
  });
});
