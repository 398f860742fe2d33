// The port pool: leases that renew and expire, the cap held exactly under concurrency from several
// OS processes, a killed holder's lease reclaimed, the bind check, and the API and metrics around it.
import { spawn } from 'node:child_process';
import { Agent, request } from 'node:http';
import { createServer, type Server } from 'node:net';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../src/db/open.js';
import { migrateToLatest } from '../src/db/migrations.js';
import { poolStats } from '../src/db/ports.js';
import { createLogger } from '../src/ops/log.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { CONTROL_TOKEN, startTestGateway, type TestGateway } from './helpers/gateway.js';

const ALLOCATOR = fileURLToPath(new URL('./fixtures/allocate-ports.mjs', import.meta.url));

interface Allocated {
  sessionId: string;
  port?: number;
  code?: string;
}

/** Runs the allocator fixture in its own OS process; resolves with its results (and the child, when holding). */
function allocateInProcess(env: Record<string, string>, ids: string[], hold = false) {
  const child = spawn(process.execPath, [ALLOCATOR, ...(hold ? ['--hold'] : [])], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin.end(JSON.stringify(ids));
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const results = new Promise<Allocated[]>((resolve, reject) => {
    const finish = () => resolve(stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Allocated));
    child.stdout.on('data', (d) => {
      stdout += d;
      if (hold && stdout.includes('holding\n')) finish();
    });
    child.on('close', (code) => (code === 0 ? finish() : reject(new Error(`allocator exited with ${code}: ${stderr}`))));
  });
  return { child, results };
}

async function insertSessions(store: Store, count: number): Promise<string[]> {
  const { rows } = await sql<{ id: string }>`
    insert into console_sessions (id, protocol) select gen_random_uuid(), 'vnc' from generate_series(1, ${count}) returning id`.execute(store.db);
  return rows.map((r) => r.id);
}

describe('port pool on PostgreSQL', () => {
  let database: TestDatabase;
  let store: Store;
  const env = (extra: Record<string, string> = {}) => ({ DATABASE_URL: database.url, VNC_WS_PORT_START: '20000', VNC_WS_PORT_END: '20899', VNC_MAX_SESSIONS: '1000', ...extra });

  beforeAll(async () => {
    database = await createTestDatabase();
    store = await openStore({ databaseUrl: database.url, dataDir: '', log: createLogger('silent') });
    await migrateToLatest(store.db);
  });
  afterAll(async () => {
    await store?.close();
    await database?.drop();
  });

  it('hands 900 ports to 1 000 sessions allocating at once from 4 processes: no duplicate, 100 exhausted', { timeout: 120_000 }, async () => {
    await sql`truncate console_sessions cascade`.execute(store.db);
    const ids = await insertSessions(store, 1000);
    const quarters = [0, 1, 2, 3].map((q) => ids.slice(q * 250, (q + 1) * 250));
    const results = (await Promise.all(quarters.map((part) => allocateInProcess(env(), part).results))).flat();
    expect(results).toHaveLength(1000);
    const ports = results.filter((r) => r.port !== undefined).map((r) => r.port!);
    expect(ports).toHaveLength(900);
    expect(new Set(ports).size).toBe(900);
    expect(Math.min(...ports)).toBe(20000);
    expect(Math.max(...ports)).toBe(20899);
    expect(results.filter((r) => r.code === 'PORTS_EXHAUSTED')).toHaveLength(100);
    const { rows } = await sql<{ n: string; d: string }>`select count(*) as n, count(distinct session_id) as d from console_ports`.execute(store.db);
    expect(rows[0]).toEqual({ n: '900', d: '900' });
  });

  it('reclaims the lease of a holder killed with SIGKILL once it expires', { timeout: 60_000 }, async () => {
    await sql`truncate console_sessions cascade`.execute(store.db);
    const [holder, next] = await insertSessions(store, 2);
    const oneport = env({ VNC_WS_PORT_START: '21000', VNC_WS_PORT_END: '21000', PORT_LEASE_SECONDS: '4' });
    const { child, results } = allocateInProcess(oneport, [holder!], true);
    expect(await results).toEqual([{ sessionId: holder, port: 21000 }]);
    child.kill('SIGKILL');
    const { allocatePort } = await import('../src/db/ports.js');
    const pool = { start: 21000, end: 21000, maxSessions: 1, leaseSeconds: 60, actor: 'test' };
    const { lease_expires_at: expiry } = await store.db.selectFrom('console_ports').select('lease_expires_at').where('session_id', '=', holder!).executeTakeFirstOrThrow();
    // The dead holder's lease still counts until it expires…
    await expect(allocatePort(store.db, next!, pool)).rejects.toMatchObject({ code: 'PORTS_EXHAUSTED' });
    // …and is reclaimed once it has.
    await new Promise((r) => setTimeout(r, Math.max(0, new Date(expiry).getTime() - Date.now()) + 200));
    expect(await allocatePort(store.db, next!, pool)).toMatchObject({ port: 21000, renewed: false });
    const audit = await store.db.selectFrom('console_audit').selectAll().where('session_id', '=', holder!).execute();
    expect(audit).toEqual([expect.objectContaining({ action: 'release_port', reason: 'port 21000 reclaimed: its lease expired', actor: 'test' })]);
  });

  it('reports warning at 80 % and critical at 95 % use', async () => {
    await sql`truncate console_sessions cascade`.execute(store.db);
    const ids = await insertSessions(store, 20);
    const range = { start: 22000, end: 22019, maxSessions: 20 };
    const { allocatePort } = await import('../src/db/ports.js');
    const health: string[] = [];
    for (const id of ids) {
      await allocatePort(store.db, id, { ...range, leaseSeconds: 60, actor: 'test' });
      health.push((await poolStats(store.db, range)).health);
    }
    expect(health.indexOf('warning')).toBe(15); // 16 of 20 = 80 %
    expect(health.indexOf('critical')).toBe(18); // 19 of 20 = 95 %
  });
});

/**
 * POSTs through a bounded keep-alive agent: every request is issued at once and the agent queues
 * them, as a frontend's HTTP client would, instead of opening a thousand sockets at the same time.
 */
function postAll(base: string, paths: string[]): Promise<{ status: number; body: any }[]> {
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  return Promise.all(
    paths.map(
      (path) =>
        new Promise<{ status: number; body: any }>((resolve, reject) => {
          const req = request(`${base}${path}`, { method: 'POST', agent, headers: { authorization: `Bearer ${CONTROL_TOKEN}` } }, (res) => {
            let text = '';
            res.on('data', (d) => (text += d));
            res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
          });
          req.on('error', reject);
          req.end();
        }),
    ),
  ).finally(() => agent.destroy());
}

describe('port pool through the API on the embedded database', () => {
  let gateway: TestGateway;

  beforeAll(async () => {
    gateway = await startTestGateway({ VNC_WS_PORT_START: '23000', VNC_WS_PORT_END: '23899', VNC_MAX_SESSIONS: '1000' });
  });
  afterAll(async () => {
    await gateway?.stop();
  });

  const metric = async (name: string): Promise<number> => {
    const text = await (await fetch(`${gateway.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line === undefined ? NaN : Number(line.split(' ')[1]);
  };

  it('leases 900 ports to 1 000 concurrent requests: 201 each, then 503 PORTS_EXHAUSTED, and the metrics move', { timeout: 120_000 }, async () => {
    const ids = await insertSessions(gateway.running.store, 1000);
    const exhaustedBefore = await metric('console_gateway_ports_exhausted_total');
    const answers = await postAll(gateway.url, ids.map((id) => `/api/v1/sessions/${id}/port`));
    const granted = answers.filter((a) => a.status === 201);
    expect(granted).toHaveLength(900);
    expect(new Set(granted.map((a) => a.body.port)).size).toBe(900);
    const refused = answers.filter((a) => a.status === 503);
    expect(refused).toHaveLength(100);
    expect(refused[0]!.body.error.code).toBe('PORTS_EXHAUSTED');
    expect((await metric('console_gateway_ports_exhausted_total')) - exhaustedBefore).toBe(100);
    expect(await metric('console_gateway_ports_allocated')).toBe(900);
    expect(await metric('console_gateway_ports_free')).toBe(0);

    // Renewal: the same port, a later lease, 200.
    const first = granted[0]!.body;
    const owner = ids[answers.indexOf(granted[0]!)]!;
    const renewed = await gateway.api('POST', `/api/v1/sessions/${owner}/port`);
    expect(renewed.status).toBe(200);
    expect(renewed.body.port).toBe(first.port);
    expect(Date.parse(renewed.body.leaseExpiresAt)).toBeGreaterThanOrEqual(Date.parse(first.leaseExpiresAt));

    const listed = await gateway.api('GET', '/api/v1/ports?list=1');
    expect(listed.body).toMatchObject({ total: 900, allocated: 900, free: 0, utilizationPercent: 100, health: 'critical' });
    expect(listed.body.allocations).toHaveLength(900);
    expect(listed.body.allocations.find((a: any) => a.sessionId === owner)).toMatchObject({ port: first.port, status: 'pending' });

    expect((await gateway.api('DELETE', `/api/v1/sessions/${owner}/port`)).body).toEqual({ released: true });
    expect((await gateway.api('DELETE', `/api/v1/sessions/${owner}/port`)).body).toEqual({ released: false });
    expect(await metric('console_gateway_ports_free')).toBe(1);
    const waiting = ids[answers.indexOf(refused[0]!)]!;
    expect((await gateway.api('POST', `/api/v1/sessions/${waiting}/port`)).body.port).toBe(first.port);
    await sql`delete from console_ports`.execute(gateway.running.store.db);
  });

  it('refuses a port to an unknown or ended session, and a malformed id', async () => {
    expect((await gateway.api('POST', '/api/v1/sessions/00000000-0000-4000-8000-000000000000/port')).status).toBe(404);
    expect((await gateway.api('POST', '/api/v1/sessions/nope/port')).status).toBe(400);
    const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc' });
    await gateway.api('DELETE', `/api/v1/sessions/${created.body.id}`);
    const ended = await gateway.api('POST', `/api/v1/sessions/${created.body.id}/port`);
    expect(ended.status).toBe(409);
    expect(ended.body.error.code).toBe('SESSION_ENDED');
    expect((await gateway.api('PUT', `/api/v1/sessions/${created.body.id}/port`)).status).toBe(405);
  });
});

describe('PORT_BIND_CHECK', () => {
  it('skips and records a port something else on this host holds', async () => {
    const database = await createTestDatabase();
    // Two neighbouring ports we hold ourselves, so no other test's server can sit on the free one:
    // `held` stays held, the spare one is let go just before the allocation.
    const { holder, spare, held } = await neighbouringPorts();
    const gateway = await startTestGateway({ VNC_WS_PORT_START: String(held), VNC_WS_PORT_END: String(held + 1), PORT_BIND_CHECK: 'true' }, database.url);
    try {
      const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc' });
      await new Promise((resolve) => spare.close(resolve));
      const leased = await gateway.api('POST', `/api/v1/sessions/${created.body.id}/port`);
      expect(leased.status).toBe(201);
      expect(leased.body.port).toBe(held + 1);
      const listed = await gateway.api('GET', '/api/v1/ports?list=1');
      expect(listed.body.conflicts).toEqual([expect.objectContaining({ port: held })]);
      const other = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc' });
      const refused = await gateway.api('POST', `/api/v1/sessions/${other.body.id}/port`);
      expect(refused.status).toBe(503);
      expect(refused.body.error.message).toMatch(/held by other programs on this host/);
    } finally {
      await gateway.stop();
      holder.close();
      await database.drop();
    }
  });
});

/** Listens on two neighbouring ports (port and port + 1), both on 0.0.0.0. */
async function neighbouringPorts(): Promise<{ holder: Server; spare: Server; held: number }> {
  for (;;) {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '0.0.0.0', resolve));
    const held = (holder.address() as { port: number }).port;
    const spare = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      spare.once('error', () => resolve(false));
      spare.listen(held + 1, '0.0.0.0', () => resolve(true));
    });
    if (ok) return { holder, spare, held };
    holder.close();
  }
}
