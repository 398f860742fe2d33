// Fair shares: per-client and per-session console caps, and the failed-upgrade throttle under a
// flood of bad tickets and bad origins from one address (loopback only, a bounded loop), while
// another address's good consoles are untouched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { Limits } from '../src/console/limits.js';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { GatewayError } from '../src/errors.js';
import { createMetrics } from '../src/ops/metrics.js';
import { openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { metricValue } from './helpers/metrics.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

let vnc: DemoVncServer;
let database: TestDatabase;
beforeAll(async () => {
  vnc = await startDemoVncServer();
  database = await createTestDatabase();
});
afterAll(async () => {
  await vnc?.close();
  await database?.drop();
});

async function newSession(gateway: TestGateway): Promise<string> {
  return (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
}

/** Opens a console from `localAddress` and resolves once the VM's banner arrived. */
function hold(url: string, localAddress: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['binary'], { localAddress });
    ws.on('error', () => {});
    ws.once('message', () => resolve(ws));
    ws.once('close', (code, reason) => reject(new Error(`closed ${code} ${reason.toString()}`)));
  });
}

const refusals = (gateway: TestGateway, cap: string) => metricValue(gateway.running.metrics.registry, 'console_gateway_refusals_total', { cap });

describe('console caps', () => {
  let gateway: TestGateway;
  beforeAll(async () => {
    gateway = await startTestGateway({ MAX_CONSOLES_PER_CLIENT: '2', MAX_CONSOLES_PER_SESSION: '2', FAILED_UPGRADES_PER_MINUTE: '0' }, database.url);
  });
  afterAll(() => gateway?.stop());

  it('refuses a third console from one address with 1013 naming MAX_CONSOLES_PER_CLIENT, not another address', async () => {
    const before = await refusals(gateway, 'max_consoles_per_client');
    const held = [
      await hold(`${gateway.wsUrl}?ticket=${await gateway.mint(await newSession(gateway))}`, '127.0.0.5'),
      await hold(`${gateway.wsUrl}?ticket=${await gateway.mint(await newSession(gateway))}`, '127.0.0.5'),
    ];
    const third = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(await newSession(gateway))}`, { localAddress: '127.0.0.5' });
    expect(third).toMatchObject({ code: 1013, reason: 'your address has 2 consoles open (MAX_CONSOLES_PER_CLIENT); close one and retry' });
    expect(await refusals(gateway, 'max_consoles_per_client')).toBe(before + 1);

    const other = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(await newSession(gateway))}`, { localAddress: '127.0.0.6', untilMessages: 1 });
    expect(other.messages).toHaveLength(1);

    held[0]!.close();
    await expect.poll(() => gateway.running.gateway.consoles.live.size).toBe(1);
    const again = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(await newSession(gateway))}`, { localAddress: '127.0.0.5', untilMessages: 1 });
    expect(again.messages).toHaveLength(1);
    held[1]!.close();
    const refused = gateway.logs.find((l) => l.code === 'CLIENT_CAPACITY');
    expect(refused).toMatchObject({ clientAddress: '127.0.0.5', closeCode: 1013 });
  });

  it('refuses a third console of one session with 1013 naming MAX_CONSOLES_PER_SESSION and keeps its ticket usable', async () => {
    const id = await newSession(gateway);
    const before = await refusals(gateway, 'max_consoles_per_session');
    const held = [
      await hold(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, '127.0.0.7'),
      await hold(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, '127.0.0.8'),
    ];
    const ticket = await gateway.mint(id);
    const third = await openConsole(`${gateway.wsUrl}?ticket=${ticket}`, { localAddress: '127.0.0.9' });
    expect(third).toMatchObject({ code: 1013, reason: 'this session has 2 consoles open (MAX_CONSOLES_PER_SESSION); close one and retry' });
    expect(await refusals(gateway, 'max_consoles_per_session')).toBe(before + 1);

    held[0]!.close();
    await expect.poll(() => gateway.running.gateway.consoles.live.size).toBe(1);
    // The refusal came before the ticket was consumed: the same ticket now opens the console.
    const retried = await openConsole(`${gateway.wsUrl}?ticket=${ticket}`, { localAddress: '127.0.0.9', untilMessages: 1 });
    expect(retried.messages).toHaveLength(1);
    held[1]!.close();
  });
});

describe('the failed-upgrade throttle', () => {
  let gateway: TestGateway;
  beforeAll(async () => {
    gateway = await startTestGateway({ FAILED_UPGRADES_PER_MINUTE: '60', ALLOWED_ORIGINS: 'https://app.example.com' }, database.url);
  });
  afterAll(() => gateway?.stop());

  it('answers a flooding address 1013 before any ticket work while another address keeps connecting', async () => {
    const registry = gateway.running.metrics.registry;
    const ticketPhase = () => metricValue(registry, 'console_gateway_upgrade_phase_duration_seconds_count', { phase: 'ticket' });
    const throttledBefore = await refusals(gateway, 'failed_upgrades_per_minute');
    const ticketsBefore = await ticketPhase();
    const id = await newSession(gateway);
    const forged = (await gateway.mint(id)).slice(0, -4) + 'AAAA';

    // 200 bad attempts, 8 at a time: forged tickets, and good tickets from a stranger's page.
    const ATTEMPTS = 200;
    const CONCURRENCY = 8;
    const codes: number[] = [];
    let next = 0;
    const attacker = async () => {
      while (next < ATTEMPTS) {
        const n = next++;
        const outcome =
          n % 4 === 3
            ? await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, { localAddress: '127.0.0.66', headers: { origin: 'https://evil.example' } })
            : await openConsole(`${gateway.wsUrl}?ticket=${forged}`, { localAddress: '127.0.0.66', headers: { origin: 'https://app.example.com' } });
        codes.push(outcome.code ?? 0);
      }
    };
    // Meanwhile a good client on another address opens consoles one after another.
    const good: number[] = [];
    let flooding = true;
    const goodClient = async () => {
      while (flooding || good.length < 3) {
        const outcome = await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(await newSession(gateway))}`, {
          localAddress: '127.0.0.1',
          headers: { origin: 'https://app.example.com' },
          untilMessages: 1,
        });
        good.push(outcome.messages.length === 1 ? 1 : (outcome.code ?? 0));
      }
    };
    const goodRun = goodClient();
    await Promise.all(Array.from({ length: CONCURRENCY }, attacker));
    flooding = false;
    await goodRun;

    const refused = codes.filter((c) => c === 4401 || c === 4403).length;
    const throttled = codes.filter((c) => c === 1013).length;
    expect(refused + throttled).toBe(ATTEMPTS);
    // Attempts already past the check when the 60th failure landed may still fail normally.
    expect(refused).toBeGreaterThanOrEqual(60);
    expect(refused).toBeLessThanOrEqual(60 + CONCURRENCY);
    expect(await refusals(gateway, 'failed_upgrades_per_minute')).toBe(throttledBefore + throttled);
    // Throttled upgrades never reached the ticket check: only the good client's and the counted
    // failures (origin refusals stop before it) did.
    const forgedRefused = codes.filter((c) => c === 4401).length;
    expect(await ticketPhase()).toBe(ticketsBefore + forgedRefused + good.length);
    expect(good.every((g) => g === 1)).toBe(true);
    expect(good.length).toBeGreaterThanOrEqual(3);

    const line = gateway.logs.find((l) => l.code === 'THROTTLED');
    expect(line).toMatchObject({ clientAddress: '127.0.0.66', closeCode: 1013 });
    expect(String(line?.msg)).toContain('FAILED_UPGRADES_PER_MINUTE=60');
  });
});

describe('the throttle memory', () => {
  it('stays bounded under failures from more addresses than it keeps, forgetting the oldest', () => {
    const limits = new Limits({ maxConsoles: 0, maxConsolesPerClient: 0, maxConsolesPerSession: 0, failedUpgradesPerMinute: 2, throttleEntries: 100 }, createMetrics({ defaultMetrics: false }));
    const bad = new GatewayError('TICKET_INVALID', 'invalid ticket');
    limits.noteRefusal('198.51.100.1', bad);
    limits.noteRefusal('198.51.100.1', bad);
    expect(() => limits.checkThrottle('198.51.100.1')).toThrow(/FAILED_UPGRADES_PER_MINUTE=2/);
    for (let i = 0; i < 1_000; i++) limits.noteRefusal(`10.0.${i >> 8}.${i & 255}`, bad);
    expect(limits.remembered).toBe(100);
    // The first address was the least recently used: forgotten, so no longer throttled.
    expect(() => limits.checkThrottle('198.51.100.1')).not.toThrow();
    // A failure the client did not cause is not counted at all.
    limits.noteRefusal('198.51.100.2', new GatewayError('DIAL_FAILED', 'the VM console port refused the connection'));
    limits.noteRefusal('198.51.100.2', new GatewayError('DIAL_FAILED', 'the VM console port refused the connection'));
    expect(() => limits.checkThrottle('198.51.100.2')).not.toThrow();
  });
});
