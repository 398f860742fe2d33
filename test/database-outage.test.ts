// A PostgreSQL outage is transient for everyone in front of the gateway: the control API answers
// 503 DATABASE_UNAVAILABLE (not 500), upgrades close with 1013 "try again later" and the same
// words, /readyz turns 503, and all of it recovers by itself once the database is back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { startDatabaseLink, type DatabaseLink } from './helpers/db-outage.js';
import { openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let database: TestDatabase;
let link: DatabaseLink;
let gateway: TestGateway;
let vnc: DemoVncServer;

beforeAll(async () => {
  database = await createTestDatabase();
  link = await startDatabaseLink(database.url);
  vnc = await startDemoVncServer();
  gateway = await startTestGateway({}, link.url);
});
afterAll(async () => {
  await gateway?.stop();
  await link?.close();
  await vnc?.close();
  await database?.drop();
});

const counter = async (metric: 'closes' | 'upgrades', label: string) =>
  (await gateway.running.metrics[metric].get()).values.find((v) => Object.values(v.labels).includes(label))?.value ?? 0;

const UNAVAILABLE = { code: 'DATABASE_UNAVAILABLE', message: 'the console database is unreachable; try again shortly' };

describe('while PostgreSQL is unreachable', () => {
  it('answers the control API with 503 DATABASE_UNAVAILABLE, closes upgrades with 1013, and recovers once it is back', async () => {
    const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const ticket = await gateway.mint(id);
    const closesBefore = await counter('closes', '1013');
    const refusedBefore = await counter('upgrades', 'DATABASE_UNAVAILABLE');

    await link.cut();
    expect(await gateway.api('GET', `/api/v1/sessions/${id}`)).toEqual({ status: 503, body: { error: UNAVAILABLE } });
    expect(await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc' })).toEqual({ status: 503, body: { error: UNAVAILABLE } });
    expect(await gateway.api('GET', '/api/v1/ports')).toEqual({ status: 503, body: { error: UNAVAILABLE } });
    expect(await openConsole(`${gateway.wsUrl}?ticket=${ticket}`)).toMatchObject({ code: 1013, reason: UNAVAILABLE.message });
    expect(await counter('closes', '1013')).toBe(closesBefore + 1);
    expect(await counter('upgrades', 'DATABASE_UNAVAILABLE')).toBe(refusedBefore + 1);
    expect((await fetch(`${gateway.url}/readyz`)).status).toBe(503);
    const logged = gateway.logs.filter((l) => l.code === 'DATABASE_UNAVAILABLE');
    expect(logged.length).toBeGreaterThanOrEqual(4);
    expect(gateway.rawLogs()).not.toContain(ticket.split('.')[2]);

    await link.restore();
    await expect.poll(async () => (await gateway.api('GET', `/api/v1/sessions/${id}`)).status, { timeout: 15_000 }).toBe(200);
    // The refused ticket was never consumed: trying again with it connects.
    const again = await openConsole(`${gateway.wsUrl}?ticket=${ticket}`, { untilMessages: 1 });
    expect(again.messages[0]?.toString()).toBe('RFB 003.008\n');
  });
});
