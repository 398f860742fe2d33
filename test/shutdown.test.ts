// SIGTERM on a real `serve` process: readyz turns 503, new consoles are refused with 1001, live ones
// get 1001 after the drain deadline, and the process exits 0.
import { createServer, type Server } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { mintTicket } from '../src/console/ticket.js';
import { startServeProcess } from './helpers/cli.js';
import { openConsole } from './helpers/gateway.js';

const SECRET = 'shutdown-test-secret-at-least-32-bytes!!';
const TOKEN = 'shutdown-control-token-0123456789';

it('drains on SIGTERM: readyz 503, new consoles refused, live ones closed with 1001 at the deadline, exit 0', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'cg-drain-'));
  const vm: Server = createServer((s) => s.on('error', () => {}));
  await new Promise<void>((r) => vm.listen(0, '127.0.0.1', r));
  const { child, url } = await startServeProcess({
    DATA_DIR: dataDir,
    TICKET_SECRET: SECRET,
    CONTROL_TOKEN: TOKEN,
    PORT: '0',
    HOST: '127.0.0.1',
    TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
    NOVNC_READY_GATING_ENABLED: 'false',
    DRAIN_TIMEOUT_SECONDS: '2',
  });
  try {
    const port = (vm.address() as { port: number }).port;
    const created = await fetch(`${url}/api/v1/sessions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port } }),
    });
    const { id } = (await created.json()) as { id: string };
    const wsUrl = `${url.replace('http', 'ws')}/websockify`;
    const live = new WebSocket(`${wsUrl}?ticket=${(await mintTicket({ sessionId: id, key: SECRET })).ticket}`, ['binary']);
    await new Promise((resolve, reject) => live.once('open', resolve).once('error', reject));
    const liveClosed = new Promise<[number, string, number]>((resolve) => live.on('close', (c, r) => resolve([c, r.toString(), Date.now()])));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

    const signalledAt = Date.now();
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    expect((await fetch(`${url}/readyz`)).status).toBe(503);
    const late = await openConsole(`${wsUrl}?ticket=${(await mintTicket({ sessionId: id, key: SECRET })).ticket}`);
    expect(late).toMatchObject({ code: 1001, reason: expect.stringMatching(/shutting down/) });

    const [code, reason, closedAt] = await liveClosed;
    expect(code).toBe(1001);
    expect(reason).toMatch(/shutting down/);
    expect(closedAt - signalledAt).toBeGreaterThanOrEqual(1500);
    expect(await exited).toBe(0);
  } finally {
    child.kill('SIGKILL');
    vm.close();
    await rm(dataDir, { recursive: true, force: true });
  }
});
