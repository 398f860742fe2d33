// Exclusive consoles, takeover and kick across two gateway processes on one PostgreSQL, with the
// live-console registry and its NOTIFY channel.
import type { ChildProcess } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { mintTicket } from '../src/console/ticket.js';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { runCli, startServeProcess } from './helpers/cli.js';
import { SECRET, TEST_ENV, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { metricValue } from './helpers/metrics.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { upgradeRequest } from './helpers/raw-ws.js';

let database: TestDatabase;
let a: TestGateway;
let b: { child: ChildProcess; url: string };
let vnc: DemoVncServer;

beforeAll(async () => {
  database = await createTestDatabase();
  vnc = await startDemoVncServer();
  a = await startTestGateway({}, database.url);
  b = await startServeProcess({ ...TEST_ENV, DATABASE_URL: database.url });
}, 60_000);
afterAll(async () => {
  b?.child.kill('SIGTERM');
  await a?.stop();
  await vnc?.close();
  await database?.drop();
});

const wsOf = (url: string) => `${url.replace('http', 'ws')}/websockify`;

async function session(): Promise<string> {
  return (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
}

async function ticket(id: string, claims: { viewOnly?: boolean; exclusive?: boolean } = {}): Promise<string> {
  return (await mintTicket({ sessionId: id, key: SECRET, ...claims })).ticket;
}

/** A console that stays open: resolves once the VM's banner arrived through it. */
async function open(url: string, t: string): Promise<{ ws: WebSocket; closed: Promise<[number, string]> }> {
  const ws = new WebSocket(`${url}?ticket=${t}`, ['binary']);
  ws.on('error', () => {});
  const closed = new Promise<[number, string]>((resolve) => ws.on('close', (code, reason) => resolve([code, reason.toString()])));
  const first = await Promise.race([new Promise((resolve) => ws.once('message', resolve)), closed]);
  if (Array.isArray(first)) throw new Error(`closed before the banner: ${first.join(' ')}`);
  return { ws, closed };
}

const stillOpen = (ws: WebSocket) => ws.readyState === WebSocket.OPEN;
const consolesOf = async (id: string) => (await a.api('GET', `/api/v1/sessions/${id}`)).body.consoles;

describe('exclusive consoles across replicas', () => {
  it('an exclusive console on one process takes over interactive consoles on the other; view-only ones stay', async () => {
    const id = await session();
    const interactive = await open(wsOf(b.url), await ticket(id));
    const viewer = await open(a.wsUrl, await ticket(id, { viewOnly: true }));
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 2, exclusive: false });

    const exclusive = await open(a.wsUrl, await ticket(id, { exclusive: true }));
    expect(await interactive.closed).toEqual([4409, 'taken over by another viewer']);
    expect(stillOpen(viewer.ws) && stillOpen(exclusive.ws)).toBe(true);
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 2, exclusive: true });

    // While it is live, interactive tickets are refused on either process; view-only ones are not.
    for (const url of [a.wsUrl, wsOf(b.url)]) {
      const refused = await openConsole(`${url}?ticket=${await ticket(id)}`);
      expect([refused.code, refused.reason, refused.messages.length]).toEqual([4409, 'the console is in exclusive use', 0]);
    }
    const second = await open(wsOf(b.url), await ticket(id, { viewOnly: true }));

    // A second exclusive console takes over the first.
    const newer = await open(wsOf(b.url), await ticket(id, { exclusive: true }));
    expect(await exclusive.closed).toEqual([4409, 'taken over by another viewer']);
    for (const c of [viewer, second, newer]) c.ws.close();
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 0, exclusive: false });

    // Once the exclusive console is gone, interactive tickets connect again.
    const after = await openConsole(`${a.wsUrl}?ticket=${await ticket(id)}`, { untilMessages: 1 });
    expect(after.messages[0]?.toString()).toBe('RFB 003.008\n');
  });

  it('an admin kick closes every console of the session on every process and counts them', async () => {
    const id = await session();
    const other = await session();
    const consoles = [await open(a.wsUrl, await ticket(id)), await open(wsOf(b.url), await ticket(id, { viewOnly: true }))];
    const bystander = await open(wsOf(b.url), await ticket(other));
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 2, exclusive: false });
    const kicked = await a.api('POST', `/api/v1/sessions/${id}/consoles/close`);
    expect([kicked.status, kicked.body]).toEqual([200, { closed: 2 }]);
    for (const c of consoles) expect(await c.closed).toEqual([4409, 'the console was closed by an administrator']);
    expect(stillOpen(bystander.ws)).toBe(true);
    bystander.ws.close();
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 0, exclusive: false });
    expect((await a.api('POST', `/api/v1/sessions/${id}/consoles/close`)).body).toEqual({ closed: 0 });
    expect((await a.api('GET', `/api/v1/sessions/${id}/consoles/close`)).status).toBe(405);
  });

  it('counts a console still waiting for its VM, and a kick refuses it with the reason', async () => {
    // No VM address yet: the console waits for one to be committed.
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).body.id;
    const started = Date.now();
    const waiting = openConsole(`${wsOf(b.url)}?ticket=${await ticket(id)}`);
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 1, exclusive: false });
    expect((await a.api('POST', `/api/v1/sessions/${id}/consoles/close`)).body).toEqual({ closed: 1 });
    const refused = await waiting;
    expect([refused.code, refused.reason, refused.messages.length]).toEqual([4409, 'the console was closed by an administrator', 0]);
    // Refused by the kick, not by the end of its wait.
    expect(Date.now() - started).toBeLessThan(5_000);
    await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 0, exclusive: false });
  });

  it('forgets the consoles of a replica that stopped renewing them', async () => {
    const id = await session();
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      // A crashed replica's exclusive console: its row expired a moment ago.
      await admin.query(
        `insert into console_live (id, session_id, replica_id, view_only, exclusive, expires_at) values ('gone', $1, 'crashed', false, true, now() - interval '1 second')`,
        [id],
      );
      expect(await consolesOf(id)).toEqual({ live: 0, exclusive: false });
      const c = await openConsole(`${a.wsUrl}?ticket=${await ticket(id)}`, { untilMessages: 1 });
      expect(c.messages).toHaveLength(1);
    } finally {
      await admin.end();
    }
  });

  it('closes the VM connection and lets the registry row go when the browser leaves while its exclusive console registers', async () => {
    // A VM that notes when the gateway dials it and when that connection ends.
    const dialed: Socket[] = [];
    const vm = createServer((socket) => dialed.push(socket));
    await new Promise<void>((resolve) => vm.listen(0, '127.0.0.1', resolve));
    const port = (vm.address() as { port: number }).port;
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port } })).body.id;
    const gone = () => metricValue(a.running.metrics.registry, 'console_gateway_upgrades_total', { outcome: 'BROWSER_GONE' });
    const goneBefore = await gone();
    // The session's row is held locked, so the exclusive console's registration (after its VM
    // answered, before the handshake is answered; its row's foreign key waits for the lock) waits
    // until the browser has left. The ticket's consume only reads the session.
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      await admin.query('begin');
      await admin.query('select id from console_sessions where id = $1 for update', [id]);
      const browser = connect(Number(new URL(a.url).port), '127.0.0.1');
      browser.on('error', () => {});
      browser.write(upgradeRequest(`/websockify?ticket=${await ticket(id, { exclusive: true })}`));
      await expect.poll(() => dialed.length, { timeout: 5_000 }).toBe(1);
      const vmClosed = new Promise<void>((resolve) => dialed[0]!.on('close', () => resolve()));
      dialed[0]!.on('error', () => {});
      browser.destroy();
      await new Promise((resolve) => setTimeout(resolve, 300));
      await admin.query('rollback');
      const kept = new Promise((_, reject) => setTimeout(() => reject(new Error('the gateway kept the VM connection open')), 5_000).unref());
      await Promise.race([vmClosed, kept]);
      await expect.poll(gone, { timeout: 5_000 }).toBe(goneBefore + 1);
      await expect.poll(() => consolesOf(id), { timeout: 5_000 }).toEqual({ live: 0, exclusive: false });
      expect(a.running.gateway.consoles.size).toBe(0);
    } finally {
      await admin.end();
      vm.close();
    }
  });

  it('refuses a view-only exclusive ticket, from the API and the CLI', async () => {
    const id = await session();
    const res = await a.api('POST', `/api/v1/sessions/${id}/tickets`, { viewOnly: true, exclusive: true });
    expect([res.status, res.body.error.message]).toEqual([400, 'a view-only ticket cannot be exclusive']);
    const minted = await runCli(['ticket', id, '--exclusive'], { DATABASE_URL: database.url, TICKET_SECRET: SECRET });
    expect(minted.code).toBe(0);
    const claims = JSON.parse(Buffer.from(JSON.parse(minted.stdout).ticket.split('.')[1], 'base64url').toString());
    expect(claims.exclusive).toBe(true);
  });
});
