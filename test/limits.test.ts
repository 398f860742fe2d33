// Console limits: idle timeout and maximum duration close with 4408, the console cap with 1013.
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';

let vm: Server;
const vmSockets = new Set<Socket>();
beforeAll(async () => {
  // A VM console that says nothing unless spoken to, and echoes what it hears.
  vm = createServer((socket) => {
    vmSockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => vmSockets.delete(socket));
    socket.pipe(socket);
  });
  await new Promise<void>((r) => vm.listen(0, '127.0.0.1', r));
});
afterAll(() => {
  for (const s of vmSockets) s.destroy();
  vm.close();
});

async function open(gateway: TestGateway): Promise<WebSocket> {
  const { port } = vm.address() as { port: number };
  const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port } })).body.id;
  const ws = new WebSocket(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`, ['binary']);
  ws.on('error', () => {});
  await new Promise((resolve, reject) => ws.once('open', resolve).once('close', reject));
  return ws;
}

const closeOf = (ws: WebSocket) => new Promise<[number, string, number]>((r) => ws.on('close', (c, reason) => r([c, reason.toString(), Date.now()])));

describe('console limits', () => {
  let gateway: TestGateway;
  afterAll(() => gateway?.stop());

  it('closes an idle console with 4408, and keeps a busy one open until its maximum duration', async () => {
    gateway = await startTestGateway({ CONSOLE_IDLE_TIMEOUT_SECONDS: '1', CONSOLE_MAX_DURATION_SECONDS: '3' });
    const idle = await open(gateway);
    const idleOpened = Date.now();
    const [code, reason, at] = await closeOf(idle);
    expect([code, reason]).toEqual([4408, 'console idle for 1 s']);
    expect(at - idleOpened).toBeGreaterThanOrEqual(900);

    const busy = await open(gateway);
    const busyOpened = Date.now();
    const keepBusy = setInterval(() => busy.send(Buffer.from('x')), 200);
    try {
      const [busyCode, busyReason, busyAt] = await closeOf(busy);
      expect([busyCode, busyReason]).toEqual([4408, 'maximum console duration of 3 s reached']);
      expect(busyAt - busyOpened).toBeGreaterThanOrEqual(2900);
    } finally {
      clearInterval(keepBusy);
    }
  });
});

describe('the console cap', () => {
  let gateway: TestGateway;
  afterAll(() => gateway?.stop());

  it('refuses consoles beyond MAX_CONSOLES with 1013 and serves again once one closes', async () => {
    gateway = await startTestGateway({ MAX_CONSOLES: '2' });
    const [a] = await Promise.all([open(gateway), open(gateway)]);
    const { port } = vm.address() as { port: number };
    const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port } })).body.id;
    expect(await openConsole(`${gateway.wsUrl}?ticket=${await gateway.mint(id)}`)).toMatchObject({
      code: 1013,
      reason: 'the gateway is at its console limit (MAX_CONSOLES=2); try again shortly',
    });
    a!.close();
    await expect.poll(() => gateway.running.gateway.consoles.live.size).toBe(1);
    const again = await open(gateway);
    again.close();
  });
});

describe('a disabled control API', () => {
  let gateway: TestGateway;
  afterAll(() => gateway?.stop());

  it('answers 503 when no CONTROL_TOKEN is configured', async () => {
    gateway = await startTestGateway({ CONTROL_TOKEN: '' });
    const res = await gateway.api('GET', '/api/v1/ports');
    expect(res).toEqual({ status: 503, body: { error: { code: 'CONTROL_DISABLED', message: 'the control API is disabled: set CONTROL_TOKEN' } } });
  });
});
