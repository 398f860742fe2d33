// The console path end to end on real parts, against both databases: PostgreSQL 15 (a cluster the
// test setup starts) and the embedded PGlite. The VM is our demo RFB server or a plain TCP peer.
import { spawn } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { createTestDatabase } from './helpers/postgres.js';
import { CONTROL_TOKEN, SECRET, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';

const WAIT_BUDGET_SECONDS = 6;

/** A VM console that echoes every byte back, to check order and integrity both ways. */
async function startEchoVm(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

const databases = [
  ['embedded', async () => ({ url: undefined as string | undefined, drop: async () => {} })],
  ['PostgreSQL 15', async () => createTestDatabase()],
] as const;

describe.each(databases)('console path on the %s database', (kind, makeDatabase) => {
  let gateway: TestGateway;
  let vnc: DemoVncServer;
  let echo: Awaited<ReturnType<typeof startEchoVm>>;
  let database: { url: string | undefined; drop(): Promise<void> };
  const minted: string[] = [];

  const mint = async (id: string) => {
    const ticket = await gateway.mint(id);
    minted.push(ticket);
    return ticket;
  };
  const session = async (target?: { host: string; port: number; path?: string }, protocol = 'vnc') => {
    const res = await gateway.api('POST', '/api/v1/sessions', { protocol, ...(target ? { target } : {}) });
    expect(res.status).toBe(201);
    return res.body.id as string;
  };

  beforeAll(async () => {
    database = await makeDatabase();
    vnc = await startDemoVncServer();
    echo = await startEchoVm();
    // These cases provoke many refusals from one address within a minute on purpose, and race 16
    // presentations of one ticket, each holding a place in its session until the database has
    // answered (a console refused for the session's cap keeps its ticket). The failed-upgrade
    // throttle and the per-session cap have their own suite (fair-limits), so they stay out of
    // the way here.
    gateway = await startTestGateway(
      { TARGET_WAIT_TIMEOUT_SECONDS: String(WAIT_BUDGET_SECONDS), FAILED_UPGRADES_PER_MINUTE: '0', MAX_CONSOLES_PER_SESSION: '0' },
      database.url,
    );
  });
  afterAll(async () => {
    await gateway?.stop();
    await vnc?.close();
    await echo?.close();
    await database?.drop();
  });

  it('pipes the VNC banner to the browser as a binary frame and answers the binary subprotocol', async () => {
    const id = await session({ host: '127.0.0.1', port: vnc.port });
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await mint(id)}`, { untilMessages: 1 });
    expect(outcome.protocol).toBe('binary');
    expect(outcome.messages[0]!.toString()).toBe('RFB 003.008\n');
  });

  it('takes the ticket from the ticket.<T> subprotocol and from token=, and offers no protocol when none was asked', async () => {
    const id = await session({ host: '127.0.0.1', port: vnc.port });
    const viaProtocol = await openConsole(gateway.wsUrl, { protocols: ['binary', `ticket.${await mint(id)}`], untilMessages: 1 });
    expect(viaProtocol.protocol).toBe('binary');
    expect(viaProtocol.messages).toHaveLength(1);
    const viaToken = await openConsole(`${gateway.wsUrl}?token=${await mint(id)}`, { protocols: [], untilMessages: 1 });
    expect(viaToken.protocol).toBe('');
    expect(viaToken.messages).toHaveLength(1);
  });

  it('keeps bytes in order both ways', async () => {
    const id = await session({ host: '127.0.0.1', port: echo.port });
    const ws = new WebSocket(`${gateway.wsUrl}?ticket=${await mint(id)}`, ['binary']);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const sent: Buffer[] = [];
    for (let i = 0; i < 500; i++) sent.push(Buffer.from(`message ${i} `.repeat(1 + (i % 37))));
    const expected = Buffer.concat(sent);
    const received: Buffer[] = [];
    let total = 0;
    const done = new Promise<void>((resolve) =>
      ws.on('message', (data: Buffer, isBinary) => {
        expect(isBinary).toBe(true);
        received.push(data);
        total += data.length;
        if (total >= expected.length) resolve();
      }),
    );
    for (const chunk of sent) ws.send(chunk);
    await done;
    expect(Buffer.concat(received).equals(expected)).toBe(true);
    ws.close();
  });

  it('closes 4400 without a ticket and 4401 for a bad one', async () => {
    expect(await openConsole(gateway.wsUrl)).toMatchObject({ code: 4400, reason: expect.stringMatching(/no ticket/) });
    expect(await openConsole(`${gateway.wsUrl}?ticket=abc.def.ghi`)).toMatchObject({ code: 4401, reason: expect.stringMatching(/invalid/) });
  });

  it('closes 4404 for an unknown session', async () => {
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await mint(randomUUID())}`)).toMatchObject({
      code: 4404,
      reason: 'unknown console session',
    });
  });

  it('closes 4409 with the failure summary for a failed session, and for a stopped one', async () => {
    const failed = await session();
    await sql`update console_sessions set status = 'failed', failure_reason = 'TCP connect refused' where id = ${failed}`.execute(gateway.running.store.db);
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await mint(failed)}`)).toMatchObject({
      code: 4409,
      reason: 'the console failed: TCP connect refused',
    });
    const stopped = await session({ host: '127.0.0.1', port: vnc.port });
    expect((await gateway.api('DELETE', `/api/v1/sessions/${stopped}`)).body.status).toBe('stopped');
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await mint(stopped)}`)).toMatchObject({ code: 4409, reason: expect.stringMatching(/stopped/) });
  });

  it('closes 4403 when a target written with plain SQL is outside TARGET_ALLOWED_CIDRS', async () => {
    const id = await session();
    await sql`update console_sessions set target_host = '169.254.169.254', target_port = 80, status = 'ready' where id = ${id}`.execute(gateway.running.store.db);
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await mint(id)}`)).toMatchObject({ code: 4403, reason: expect.stringMatching(/outside TARGET_ALLOWED_CIDRS/) });
  });

  it('closes 4502 when the VM console port refuses the connection', async () => {
    const closed = await startEchoVm();
    const port = closed.port;
    await closed.close();
    const id = await session({ host: '127.0.0.1', port });
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await mint(id)}`)).toMatchObject({ code: 4502, reason: expect.stringMatching(/refused/) });
  });

  it('closes 1013 when the VM address is never committed, within the budget plus one second', async () => {
    const id = await session();
    const started = Date.now();
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await mint(id)}`);
    const elapsed = (Date.now() - started) / 1000;
    expect(outcome).toMatchObject({ code: 1013, reason: expect.stringMatching(/not committed within 6 s/) });
    expect(elapsed).toBeGreaterThanOrEqual(WAIT_BUDGET_SECONDS - 0.5);
    expect(elapsed).toBeLessThanOrEqual(WAIT_BUDGET_SECONDS + 1);
  });

  it('lets exactly one of many concurrent connections with one ticket through', async () => {
    const id = await session({ host: '127.0.0.1', port: vnc.port });
    const ticket = await mint(id);
    const outcomes = await Promise.all(Array.from({ length: 16 }, () => openConsole(`${gateway.wsUrl}?ticket=${ticket}`, { untilMessages: 1 })));
    expect(outcomes.filter((o) => o.messages.length === 1)).toHaveLength(1);
    const refused = outcomes.filter((o) => o.code === 4401);
    expect(refused, JSON.stringify(outcomes.map((o) => [o.code, o.reason]))).toHaveLength(15);
    for (const o of refused) expect(o.reason).toMatch(/already used/);
  });

  it('connects a console whose VM address a separate process commits with plain SQL two seconds after the WebSocket opened', async () => {
    const id = await session();
    const pending = openConsole(`${gateway.wsUrl}?ticket=${await mint(id)}`, { untilMessages: 1 });
    await new Promise((r) => setTimeout(r, 2000));
    const update = `update console_sessions set target_host = '127.0.0.1', target_port = ${vnc.port}, status = 'provisioning' where id = '${id}'`;
    if (database.url !== undefined) {
      // A different OS process, as a VM backend would be.
      await new Promise<void>((resolve, reject) => {
        const psql = spawn('psql', [database.url!, '-v', 'ON_ERROR_STOP=1', '-c', update], { stdio: 'ignore' });
        psql.on('error', reject);
        psql.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}`))));
      });
    } else {
      // The embedded database belongs to one process; the backend's SQL runs on its connection.
      await sql.raw(update).execute(gateway.running.store.db);
    }
    const outcome = await pending;
    expect(outcome.messages[0]?.toString()).toBe('RFB 003.008\n');
    const waited = gateway.logs.find((l) => l.msg === 'console connected' && l.sessionId === id);
    expect(waited).toBeDefined();
  });

  it('closes a live console with 4409 when its session is stopped', async () => {
    const id = await session({ host: '127.0.0.1', port: echo.port });
    const ws = new WebSocket(`${gateway.wsUrl}?ticket=${await mint(id)}`, ['binary']);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const closed = new Promise<[number, string]>((resolve) => ws.on('close', (code, reason) => resolve([code, reason.toString()])));
    expect((await gateway.api('DELETE', `/api/v1/sessions/${id}`)).status).toBe(200);
    expect(await closed).toEqual([4409, 'the console session was stopped']);
    const closes = (await gateway.running.metrics.closes.get()).values.find((v) => v.labels.code === '4409');
    expect(closes?.value).toBeGreaterThanOrEqual(2); // the refusal of a stopped session earlier, and this console
  });

  it('never writes a ticket, the secret or the control token into its logs', () => {
    const logs = gateway.rawLogs();
    expect(minted.length).toBeGreaterThan(10);
    for (const ticket of minted) expect(logs).not.toContain(ticket.split('.')[2]);
    expect(logs).not.toContain(SECRET);
    expect(logs).not.toContain(CONTROL_TOKEN);
    expect(logs).not.toContain('ticket=');
  });
});

describe('the HTTP surface', () => {
  let gateway: TestGateway;
  beforeAll(async () => {
    gateway = await startTestGateway();
  });
  afterAll(() => gateway?.stop());

  it('answers a plain GET on /websockify, a malformed upgrade and an unknown path with plain HTTP errors', async () => {
    expect((await fetch(`${gateway.url}/websockify`)).status).toBe(400);
    const raw = async (request: string) =>
      new Promise<string>((resolve) => {
        const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1', () => socket.write(request));
        let text = '';
        socket.on('data', (d) => (text += d));
        socket.on('close', () => resolve(text));
        socket.on('error', () => resolve(text));
      });
    const badKey = await raw('GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n');
    expect(badKey).toMatch(/^HTTP\/1.1 400 .*\r\n[\s\S]*Sec-WebSocket-Key/);
    const elsewhere = await raw('GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    expect(elsewhere).toMatch(/^HTTP\/1.1 404/);
    const garbage = await raw('NONSENSE\r\n\r\n');
    expect(garbage).toMatch(/^HTTP\/1.1 400/);
  });

  it('refuses a browser origin other than its own and accepts its own and none', async () => {
    const other = await openConsole(gateway.wsUrl, { headers: { Origin: 'https://evil.example' } });
    expect(other).toMatchObject({ code: 4403, reason: expect.stringMatching(/origin/) });
    const own = await openConsole(gateway.wsUrl, { headers: { Origin: gateway.url } });
    expect(own.code).toBe(4400);
  });

  it('guards the control API with the bearer token', async () => {
    expect((await gateway.api('GET', '/api/v1/ports', undefined, 'wrong-token-wrong-token')).status).toBe(401);
    const res = await fetch(`${gateway.url}/api/v1/ports`);
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({ error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token' } });
  });

  it('answers bad control-plane input with a clear 4xx', async () => {
    const cases: [string, string, unknown, number, RegExp][] = [
      ['POST', '/api/v1/sessions', { protocol: 'rdp' }, 400, /protocol must be/],
      ['POST', '/api/v1/sessions', { protocol: 'vnc', color: 'red' }, 400, /unknown field: color/],
      ['POST', '/api/v1/sessions', '{not json', 400, /not valid JSON/],
      ['POST', '/api/v1/sessions', { protocol: 'vnc', id: 'nope' }, 400, /UUID/],
      ['POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '8.8.8.8', port: 5900 } }, 403, /outside TARGET_ALLOWED_CIDRS/],
      ['POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '2130706434', port: 5900 } }, 403, /127\.0\.0\.2 is outside/],
      ['POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: 0 } }, 400, /port/],
      ['GET', `/api/v1/sessions/${randomUUID()}`, undefined, 404, /unknown console session/],
      ['GET', '/api/v1/sessions/not-a-uuid', undefined, 400, /UUID/],
      ['PATCH', `/api/v1/sessions/${randomUUID()}`, undefined, 405, /use GET, DELETE/],
      ['GET', '/api/v1/nothing', undefined, 404, /no such API path/],
    ];
    for (const [method, path, body, status, message] of cases) {
      const res = await gateway.api(method, path, body);
      expect({ method, path, status: res.status }).toEqual({ method, path, status });
      expect(res.body.error.message).toMatch(message);
    }
    const big = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', ownerId: 'x'.repeat(20_000) });
    expect(big.status).toBe(413);
    const form = await fetch(`${gateway.url}/api/v1/sessions`, { method: 'POST', headers: { authorization: `Bearer ${CONTROL_TOKEN}`, 'content-type': 'text/plain' }, body: 'x' });
    expect(form.status).toBe(415);
  });

  it('creates a session, commits its target and mints a ticket whose console URL connects', async () => {
    const vnc = await startDemoVncServer();
    try {
      const id = randomUUID();
      const created = await gateway.api('POST', '/api/v1/sessions', { id, protocol: 'vnc', ownerId: 'tenant-1' });
      expect(created.body).toMatchObject({ id, status: 'pending', protocol: 'vnc', ownerId: 'tenant-1', target: null, readyAt: null });
      expect((await gateway.api('POST', '/api/v1/sessions', { id, protocol: 'vnc' })).status).toBe(409);
      const committed = await gateway.api('PUT', `/api/v1/sessions/${id}/target`, { host: '127.0.0.1', port: vnc.port });
      expect(committed.body).toMatchObject({ status: 'ready', target: { host: '127.0.0.1', port: vnc.port, path: null } });
      expect(committed.body.readyAt).not.toBeNull();
      const minted = await gateway.api('POST', `/api/v1/sessions/${id}/tickets`, { ttlSeconds: 30 });
      expect(minted.status).toBe(201);
      expect(minted.body.consoleUrl).toBe(`${gateway.url}/console?ticket=${minted.body.ticket}`);
      expect(Date.parse(minted.body.expiresAt) - Date.now()).toBeLessThanOrEqual(30_000);
      expect((await gateway.api('POST', `/api/v1/sessions/${id}/tickets`, { ttlSeconds: 301 })).status).toBe(400);
      const outcome = await openConsole(`${gateway.wsUrl}?ticket=${minted.body.ticket}`, { untilMessages: 1 });
      expect(outcome.messages[0]!.toString()).toBe('RFB 003.008\n');
      const stopped = await gateway.api('DELETE', `/api/v1/sessions/${id}`);
      expect(stopped.body).toMatchObject({ status: 'stopped' });
      expect(stopped.body.finishedAt).not.toBeNull();
      expect((await gateway.api('POST', `/api/v1/sessions/${id}/tickets`, {})).status).toBe(409);
      expect((await gateway.api('PUT', `/api/v1/sessions/${id}/target`, { host: '127.0.0.1', port: vnc.port })).status).toBe(409);
    } finally {
      await vnc.close();
    }
  });

  it('serves health, readiness and Prometheus metrics', async () => {
    expect(await (await fetch(`${gateway.url}/healthz`)).json()).toEqual({ status: 'ok' });
    expect(await (await fetch(`${gateway.url}/readyz`)).json()).toEqual({ status: 'ready', database: 'embedded' });
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    expect(metrics).toMatch(/console_gateway_upgrades_total\{outcome="TICKET_MISSING"\} \d+/);
    expect(metrics).toMatch(/console_gateway_consoles_active 0/);
  });
});
