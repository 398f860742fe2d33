// The tickets the gateway mints itself (control API and the `ticket` command) must pass its own
// checks whatever TICKET_ISSUERS allows: they carry its first entry as their issuer.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { runCli } from './helpers/cli.js';
import { SECRET, openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

const ISSUERS = 'https://app.example,https://admin.example';
let database: TestDatabase;
let gateway: TestGateway;
let vnc: DemoVncServer;

beforeAll(async () => {
  database = await createTestDatabase();
  vnc = await startDemoVncServer();
  gateway = await startTestGateway({ TICKET_ISSUERS: ISSUERS }, database.url);
});
afterAll(async () => {
  await gateway?.stop();
  await vnc?.close();
  await database?.drop();
});

describe('a gateway with TICKET_ISSUERS that does not list console-gateway', () => {
  it('connects consoles with tickets from its control API and from the ticket command', async () => {
    const created = await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } });
    const id = created.body.id as string;

    const fromApi = await gateway.api('POST', `/api/v1/sessions/${id}/tickets`, {});
    expect(fromApi.status).toBe(201);
    const viaApi = await openConsole(`${gateway.wsUrl}?ticket=${fromApi.body.ticket}`, { untilMessages: 1 });
    expect(viaApi).toMatchObject({ protocol: 'binary' });
    expect(viaApi.messages[0]?.toString()).toBe('RFB 003.008\n');

    const fromCli = await runCli(['ticket', id], { DATABASE_URL: database.url, TICKET_SECRET: SECRET, TICKET_ISSUERS: ISSUERS });
    expect(fromCli.code).toBe(0);
    const viaCli = await openConsole(`${gateway.wsUrl}?ticket=${JSON.parse(fromCli.stdout).ticket}`, { untilMessages: 1 });
    expect(viaCli.messages[0]?.toString()).toBe('RFB 003.008\n');
  });
});
