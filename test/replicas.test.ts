// Several replicas on one PostgreSQL 15: a second gateway runs as a separate OS process.
import type { ChildProcess } from 'node:child_process';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { startServeProcess } from './helpers/cli.js';
import { CONTROL_TOKEN, TEST_ENV, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let database: TestDatabase;
let a: TestGateway;
let b: { child: ChildProcess; url: string };
let vnc: DemoVncServer;

beforeAll(async () => {
  database = await createTestDatabase();
  vnc = await startDemoVncServer();
  a = await startTestGateway({}, database.url);
  b = await startServeProcess({ ...TEST_ENV, DATABASE_URL: database.url });
});
afterAll(async () => {
  b?.child.kill('SIGTERM');
  await a?.stop();
  await vnc?.close();
  await database?.drop();
});

const wsUrlOf = (url: string) => `${url.replace('http', 'ws')}/websockify`;

describe('replicas sharing one PostgreSQL', () => {
  it('lets exactly one connection win a ticket presented to two gateway processes at once', async () => {
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
    const ticket = await a.mint(id);
    const attempts = [a.wsUrl, wsUrlOf(b.url)].flatMap((url) => Array.from({ length: 10 }, () => openConsole(`${url}?ticket=${ticket}`, { untilMessages: 1 })));
    const outcomes = await Promise.all(attempts);
    expect(outcomes.filter((o) => o.messages.length === 1)).toHaveLength(1);
    expect(outcomes.filter((o) => o.code === 4401)).toHaveLength(19);
  });

  it('closes a console on one replica when its session is stopped through the other', async () => {
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
    const ws = new WebSocket(`${a.wsUrl}?ticket=${await a.mint(id)}`, ['binary']);
    await new Promise((resolve) => ws.once('message', resolve));
    const closed = new Promise<[number, string]>((resolve) => ws.on('close', (c, r) => resolve([c, r.toString()])));
    const stop = await fetch(`${b.url}/api/v1/sessions/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${CONTROL_TOKEN}` } });
    expect(stop.status).toBe(200);
    expect(await closed).toEqual([4409, 'the console session was stopped']);
  });

  it('re-establishes a killed LISTEN connection and still wakes waiting consoles', async () => {
    const id = (await a.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).body.id;
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      const killed = await admin.query(
        `select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name = 'console-gateway' and query ilike 'listen%'`,
      );
      expect(killed.rowCount).toBeGreaterThanOrEqual(2); // one per replica
      await expect.poll(() => a.logs.some((l) => l.msg === 'database LISTEN connection lost; reconnecting'), { timeout: 5000 }).toBe(true);
      const listeners = async () =>
        (await admin.query(`select count(*)::int as n from pg_stat_activity where datname = current_database() and query ilike 'listen%'`)).rows[0].n;
      await expect.poll(listeners, { timeout: 10_000 }).toBeGreaterThanOrEqual(2);
      const pending = openConsole(`${a.wsUrl}?ticket=${await a.mint(id)}`, { untilMessages: 1 });
      await new Promise((r) => setTimeout(r, 500));
      await admin.query(`update console_sessions set target_host = '127.0.0.1', target_port = $1, status = 'provisioning' where id = $2`, [vnc.port, id]);
      expect((await pending).messages[0]?.toString()).toBe('RFB 003.008\n');
    } finally {
      await admin.end();
    }
  });

  it('answers 503 on /readyz and the control API, and closes consoles with 1013 and a reason, while the database is gone', async () => {
    expect((await fetch(`${a.url}/readyz`)).status).toBe(200);
    const isolated = await createTestDatabase();
    const c = await startTestGateway({}, isolated.url);
    try {
      const id = (await c.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
      await isolated.drop();
      expect(await openConsole(`${c.wsUrl}?ticket=${await c.mint(id)}`)).toMatchObject({
        code: 1013,
        reason: 'the console database is unreachable; try again shortly',
      });
      expect((await c.api('GET', `/api/v1/sessions/${id}`)).status).toBe(503);
      const res = await fetch(`${c.url}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ status: 'database unreachable', database: 'postgres' });
      expect((await fetch(`${c.url}/healthz`)).status).toBe(200);
    } finally {
      await c.stop();
    }
  });
});
