// The ops endpoints: `gate` as a separate process serves /healthz, /readyz and /metrics on
// OPS_PORT; /readyz (there and on `serve`) fails while the database or its LISTEN connection is
// down; METRICS_TOKEN guards /metrics; the edge metrics move when their events happen.
import type { ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { startGateProcess } from './helpers/cli.js';
import { TEST_ENV, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { metricValue, valueIn } from './helpers/metrics.js';
import { adminUrl, createTestDatabase, type TestDatabase } from './helpers/postgres.js';

const METRICS_TOKEN = 'metrics-token-for-tests-0123';

async function admin<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl() });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

const readyz = async (url: string) => {
  const res = await fetch(`${url}/readyz`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};

let database: TestDatabase;
let gate: { child: ChildProcess; url: string };
let gateway: TestGateway;
let vnc: DemoVncServer;
let refusing: Server;
beforeAll(async () => {
  database = await createTestDatabase();
  vnc = await startDemoVncServer();
  refusing = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
  await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve));
  gateway = await startTestGateway({ GATE_ENABLED: 'false', NOVNC_READY_GATING_ENABLED: 'true' }, database.url);
  gate = await startGateProcess({
    ...TEST_ENV,
    DATABASE_URL: database.url,
    NOVNC_READY_GATING_ENABLED: 'true',
    NOVNC_READY_POLL_INTERVAL_SECONDS: '0.2',
    NOVNC_READY_TIMEOUT_SECONDS: '3',
    OPS_PORT: '0',
    METRICS_TOKEN,
  });
}, 120_000);
afterAll(async () => {
  gate?.child.kill('SIGTERM');
  await gateway?.stop();
  await vnc?.close();
  refusing?.close();
  await database?.drop();
});

const gateMetrics = async () => (await fetch(`${gate.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text();

describe('the gate sidecar on OPS_PORT', () => {
  it('answers /healthz and /readyz, and /metrics only with METRICS_TOKEN', async () => {
    expect((await fetch(`${gate.url}/healthz`)).status).toBe(200);
    expect(await readyz(gate.url)).toEqual({ status: 200, body: { status: 'ready', database: 'postgres', listen: 'up' } });
    const anonymous = await fetch(`${gate.url}/metrics`);
    expect(anonymous.status).toBe(401);
    expect(await anonymous.text()).not.toContain('console_gateway_');
    const wrong = await fetch(`${gate.url}/metrics`, { headers: { authorization: 'Bearer wrong-token-of-some-length' } });
    expect(wrong.status).toBe(401);
    const text = await gateMetrics();
    expect(valueIn(text, 'console_gateway_db_listen_up')).toBe(1);
    expect(valueIn(text, 'console_gateway_db_pool_connections', { state: 'total' })).toBeGreaterThanOrEqual(1);
    expect((await fetch(`${gate.url}/api/v1/ports`)).status).toBe(404);
  });

  it('counts probe durations and failures by kind as the gate probes', async () => {
    const before = await gateMetrics();
    const { port: refusedPort } = await new Promise<{ port: number }>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const address = s.address() as { port: number };
        s.close(() => resolve(address));
      });
    });
    const targets = [
      { host: '127.0.0.1', port: refusedPort }, // tcp: nothing listens
      { host: '127.0.0.1', port: (refusing.address() as { port: number }).port }, // banner: HTTP instead of RFB
      { host: '127.0.0.1', port: vnc.port }, // ok
    ];
    for (const target of targets) expect((await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target })).status).toBe(201);
    const delta = async (name: string, labels: Record<string, string>) => valueIn(await gateMetrics(), name, labels) - valueIn(before, name, labels);
    await expect.poll(() => delta('console_gateway_probe_failures_total', { kind: 'tcp' }), { timeout: 20_000 }).toBeGreaterThan(0);
    await expect.poll(() => delta('console_gateway_probe_failures_total', { kind: 'banner' }), { timeout: 20_000 }).toBeGreaterThan(0);
    await expect.poll(() => delta('console_gateway_probe_duration_seconds_count', { result: 'ok' }), { timeout: 20_000 }).toBeGreaterThan(0);
    expect(await delta('console_gateway_probe_duration_seconds_count', { result: 'failed' })).toBeGreaterThan(0);
  });
});

describe('/readyz and the database', () => {
  it('fails on gate and serve while LISTEN is down, then while the database is, and recovers', async () => {
    const name = new URL(database.url).pathname.slice(1);
    // Warm both pools, so the ping below has a connection that outlives the lock-out.
    expect((await readyz(gate.url)).status).toBe(200);
    expect((await readyz(gateway.url)).status).toBe(200);
    try {
      await admin(async (client) => {
        await client.query(`alter database "${name}" allow_connections false`);
        // Only the LISTEN connections: pooled ones stay, so the database itself still answers.
        await client.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and query ilike 'listen%'`, [name]);
      });
      for (const url of [gate.url, gateway.url]) {
        await expect.poll(async () => (await readyz(url)).body, { timeout: 10_000 }).toMatchObject({ status: 'database LISTEN connection down', listen: 'down' });
      }
      expect(valueIn(await gateMetrics(), 'console_gateway_db_listen_up')).toBe(0);
      expect(await metricValue(gateway.running.metrics.registry, 'console_gateway_db_listen_up')).toBe(0);

      await admin((client) => client.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = $1`, [name]));
      for (const url of [gate.url, gateway.url]) {
        await expect.poll(async () => (await readyz(url)).body, { timeout: 15_000 }).toMatchObject({ status: 'database unreachable' });
      }
    } finally {
      await admin((client) => client.query(`alter database "${name}" allow_connections true`));
    }
    for (const url of [gate.url, gateway.url]) {
      await expect.poll(async () => (await readyz(url)).status, { timeout: 20_000 }).toBe(200);
    }
    expect(valueIn(await gateMetrics(), 'console_gateway_db_listen_up')).toBe(1);
  }, 90_000);
});

describe('upgrade phase metrics', () => {
  it('times the ticket, database, wait and dial phases of a console', async () => {
    const registry = gateway.running.metrics.registry;
    const phases = ['ticket', 'database', 'wait', 'dial'];
    const count = (phase: string) => metricValue(registry, 'console_gateway_upgrade_phase_duration_seconds_count', { phase });
    const before = await Promise.all(phases.map(count));
    const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, { untilMessages: 1 });
    expect(outcome.messages).toHaveLength(1);
    expect(await Promise.all(phases.map(count))).toEqual(before.map((n) => n + 1));
  });
});
