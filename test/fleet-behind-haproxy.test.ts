// Proof on real parts: three `serve` processes and a separate `gate` on one PostgreSQL 15 behind
// Debian's HAProxy (health check on /readyz, X-Forwarded-For), plus one replica behind HAProxy's
// PROXY protocol v2. A rolling restart while consoles stream and new ones keep arriving; the real
// client address through the balancer and a forged header ignored; the caps and the throttle
// tripped by the behaviour they exist for.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { mintTicket } from '../src/console/ticket.js';
import { startGateProcess, startServeProcess } from './helpers/cli.js';
import { CONTROL_TOKEN, SECRET, TEST_ENV, openConsole, startTestGateway, type Outcome, type TestGateway } from './helpers/gateway.js';
import { HAPROXY } from './helpers/haproxy.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { exited, randomInt, stopProcess, tail } from './helpers/xvnc.js';

// Close codes a page may retry on with a fresh ticket (the documented retryable set).
const RETRYABLE = new Set([1001, 1013, 4502]);

interface Replica {
  port: number;
  child: ChildProcess;
  /** Log lines of every process that served this port. */
  logs: string[];
  output: () => string;
}

let database: TestDatabase;
let vm: Server;
let gate: { child: ChildProcess };
let replicas: Replica[] = [];
let proxied: TestGateway;
let haproxy: { child: ChildProcess; port: number; proxyPort: number; dir: string };
const vmSockets = new Set<Socket>();

const REPLICA_ENV = () => ({
  ...TEST_ENV,
  DATABASE_URL: database.url,
  NOVNC_READY_GATING_ENABLED: 'true',
  GATE_ENABLED: 'false',
  TRUSTED_PROXIES: '127.0.0.1/32',
  DRAIN_TIMEOUT_SECONDS: '2',
  MAX_CONSOLES_PER_CLIENT: '2',
  MAX_CONSOLES_PER_SESSION: '2',
  FAILED_UPGRADES_PER_MINUTE: '3',
});

async function startReplica(port: number, logs: string[] = []): Promise<Replica> {
  const started = await startServeProcess({ ...REPLICA_ENV(), PORT: String(port) });
  return { port: Number(new URL(started.url).port), child: started.child, logs, output: started.output };
}

/** HAProxy on two free ports: HTTP with X-Forwarded-For to the replicas, and PROXY v2 to `proxied`. */
async function startBalancer(): Promise<typeof haproxy> {
  const dir = await mkdtemp(join(tmpdir(), 'cg-fleet-haproxy-'));
  for (let attempt = 0; attempt < 8; attempt++) {
    const port = randomInt(33_000, 34_000);
    const proxyPort = port + 1_000;
    const config = join(dir, 'haproxy.cfg');
    await writeFile(
      config,
      [
        'defaults',
        '  mode http',
        '  timeout connect 2s',
        '  timeout client 60s',
        '  timeout server 60s',
        '  timeout tunnel 10m',
        '  timeout check 1s',
        '  retries 3',
        '  option redispatch',
        'frontend consoles',
        `  bind 127.0.0.1:${port}`,
        '  option forwardfor',
        '  default_backend gateways',
        'backend gateways',
        '  balance roundrobin',
        '  option httpchk GET /readyz',
        '  default-server check inter 200ms fall 1 rise 2',
        ...replicas.map((r, i) => `  server g${i + 1} 127.0.0.1:${r.port}`),
        'frontend proxied',
        `  bind 127.0.0.1:${proxyPort}`,
        '  default_backend proxied',
        'backend proxied',
        '  option httpchk GET /readyz',
        `  server p1 127.0.0.1:${new URL(proxied.url).port} send-proxy-v2 check check-send-proxy inter 500ms`,
        '',
      ].join('\n'),
    );
    const child = spawn(HAPROXY, ['-db', '-f', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = tail(child.stderr!);
    tail(child.stdout!);
    const up = await Promise.race([
      (async () => {
        for (let i = 0; i < 50; i++) {
          if (await canConnect(port)) return true;
          await new Promise((r) => setTimeout(r, 100));
        }
        return false;
      })(),
      exited(child).then(() => false),
    ]);
    if (up) return { child, port, proxyPort, dir };
    await stopProcess(child);
    if (attempt === 7) throw new Error(`haproxy did not start: ${log()}`);
  }
  throw new Error('unreachable');
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

beforeAll(async () => {
  database = await createTestDatabase();
  // A VM console: the RFB banner (so the gate finds it ready), then an echo of what it hears.
  vm = createServer((socket) => {
    vmSockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => vmSockets.delete(socket));
    socket.write('RFB 003.008\n');
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => vm.listen(0, '127.0.0.1', resolve));
  // The first replica migrates; the others and the gate start on the migrated schema together.
  replicas = [await startReplica(0)];
  const [second, third, gateProcess, proxiedGateway] = await Promise.all([
    startReplica(0),
    startReplica(0),
    startGateProcess({ ...TEST_ENV, DATABASE_URL: database.url, NOVNC_READY_GATING_ENABLED: 'true', NOVNC_READY_POLL_INTERVAL_SECONDS: '0.1', OPS_PORT: '0' }),
    startTestGateway({ PROXY_PROTOCOL: 'true', GATE_ENABLED: 'false', NOVNC_READY_GATING_ENABLED: 'true' }, database.url),
  ]);
  replicas.push(second, third);
  gate = gateProcess;
  proxied = proxiedGateway;
  haproxy = await startBalancer();
  await waitForBalancer();
}, 120_000);

afterAll(async () => {
  if (haproxy) {
    await stopProcess(haproxy.child);
    await rm(haproxy.dir, { recursive: true, force: true });
  }
  await Promise.all(replicas.map((r) => stopProcess(r.child)));
  if (gate) await stopProcess(gate.child);
  await proxied?.stop();
  for (const s of vmSockets) s.destroy();
  vm?.close();
  await database?.drop();
});

const balancer = () => `http://127.0.0.1:${haproxy.port}`;
const balancerWs = () => `ws://127.0.0.1:${haproxy.port}/websockify`;

/** Every replica answers through the balancer (HAProxy marked each one up). */
async function waitForBalancer(): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const statuses = await Promise.all(Array.from({ length: 6 }, () => fetch(`${balancer()}/readyz`).then((r) => r.status, () => 0)));
    if (statuses.every((status) => status === 200)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('HAProxy did not mark every replica up within 20 s');
}

/** A session made through the balancer, or straight at `base` (so round robin sees only consoles). */
async function newSession(base = balancer()): Promise<string> {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(`${base}/api/v1/sessions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CONTROL_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port: (vm.address() as { port: number }).port } }),
    }).catch(() => undefined);
    if (res?.status === 201) return ((await res.json()) as { id: string }).id;
    // HAProxy answers 503 only in the instant between a replica closing and its check noticing.
    if (attempt >= 5) throw new Error(`could not create a session: ${res?.status}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const ticketFor = async (id: string) => (await mintTicket({ sessionId: id, key: SECRET })).ticket;

/** Opens a console through `url`, waits for the banner and one echo, and keeps it open. */
function liveConsole(url: string, localAddress: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['binary'], { localAddress });
    ws.on('error', () => {});
    let messages = 0;
    ws.on('message', () => {
      messages++;
      if (messages === 1) ws.send(Buffer.from('ping'));
      if (messages === 2) resolve(ws);
    });
    ws.once('close', (code, reason) => reject(Object.assign(new Error(`closed ${code} ${reason.toString()}`), { code })));
  });
}

const connectedLines = (lines: string[]) =>
  lines
    .flatMap((l) => l.split('\n'))
    .filter((l) => l.includes('"console connected"'))
    .map((l) => JSON.parse(l) as { clientAddress: string; sessionId: string });
const allLogs = () => replicas.flatMap((r) => [...r.logs, r.output()]);

describe('a fleet behind HAProxy', () => {
  it('survives a rolling restart: new consoles fail only with retryable codes, live ones end with 1001 and a reason', async () => {
    // Live consoles streaming through the balancer, spread over the three replicas.
    const live = await Promise.all(Array.from({ length: 6 }, async (_, i) => liveConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession())}`, `127.0.3.${i + 1}`)));
    const liveEnds: { code: number; reason: string }[] = [];
    const streaming = setInterval(() => live.forEach((ws) => ws.readyState === WebSocket.OPEN && ws.send(Buffer.from('x'))), 100);
    for (const ws of live) ws.on('close', (code, reason) => liveEnds.push({ code, reason: reason.toString() }));

    // New consoles keep arriving; each retries with a fresh ticket on a retryable close.
    const arrivals: { attempts: Outcome[]; connected: boolean }[] = [];
    let restarting = true;
    const arrive = async (localAddress: string) => {
      while (restarting) {
        const record = { attempts: [] as Outcome[], connected: false };
        arrivals.push(record);
        for (let attempt = 0; attempt < 4 && !record.connected; attempt++) {
          const outcome = await openConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession())}`, { localAddress, untilMessages: 1, timeoutMs: 15_000 });
          record.attempts.push(outcome);
          record.connected = outcome.messages.length === 1;
          // Back off as the console page does (0.5 s, doubling): a replica still draining keeps
          // refusing until the balancer's health check has taken it out, and requests made in a
          // fixed rhythm can meet it on every attempt in round robin.
          if (!record.connected) await sleep(500 * 2 ** attempt);
        }
      }
    };
    const arriving = [arrive('127.0.2.1'), arrive('127.0.2.2')];

    try {
      for (let i = 0; i < replicas.length; i++) {
        const old = replicas[i]!;
        old.child.kill('SIGTERM');
        expect((await exited(old.child)).code).toBe(0);
        replicas[i] = await startReplica(old.port, [...old.logs, old.output()]);
        // Back in rotation (rise 2 × 200 ms) before the next one goes.
        await waitForBalancer();
      }
    } finally {
      restarting = false;
      await Promise.all(arriving);
      clearInterval(streaming);
    }

    expect(arrivals.length).toBeGreaterThan(5);
    for (const arrival of arrivals) {
      expect(arrival.connected, JSON.stringify(arrival.attempts.map((a) => [a.code, a.reason]))).toBe(true);
      for (const failed of arrival.attempts.filter((a) => a.messages.length === 0)) {
        expect(RETRYABLE.has(failed.code ?? 0), `${failed.code} ${failed.reason}`).toBe(true);
        expect(failed.reason).not.toBe('');
      }
    }
    // Every replica restarted, so every live console was on one that drained: 1001 with words.
    await expect.poll(() => liveEnds.length, { timeout: 10_000 }).toBe(live.length);
    for (const end of liveEnds) expect(end).toMatchObject({ code: 1001, reason: expect.stringMatching(/shutting down/) });
  }, 90_000);

  it('logs the real client behind HAProxy and ignores a header forged by an untrusted peer', async () => {
    const forged = { 'x-forwarded-for': '6.6.6.6' };
    const via = await openConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession())}`, { localAddress: '127.0.0.51', headers: forged, untilMessages: 1 });
    expect(via.messages).toHaveLength(1);
    const direct = await openConsole(`ws://127.0.0.1:${replicas[0]!.port}/websockify?ticket=${await ticketFor(await newSession())}`, {
      localAddress: '127.0.0.52',
      headers: forged,
      untilMessages: 1,
    });
    expect(direct.messages).toHaveLength(1);
    // The replicas log through a pipe: a line may reach the test after the console's first bytes.
    const clients = () => connectedLines(allLogs()).map((l) => l.clientAddress);
    await expect.poll(clients).toEqual(expect.arrayContaining(['127.0.0.51', '127.0.0.52']));
    const seen = clients();
    expect(seen).not.toContain('6.6.6.6');
    expect(seen).not.toContain('127.0.0.1');

    // The PROXY protocol v2 path: HAProxy's send-proxy-v2 names the client, no header needed.
    const viaProxyProtocol = await openConsole(`ws://127.0.0.1:${haproxy.proxyPort}/websockify?ticket=${await ticketFor(await newSession())}`, {
      localAddress: '127.0.0.61',
      untilMessages: 1,
    });
    expect(viaProxyProtocol.messages).toHaveLength(1);
    expect(proxied.logs.filter((l) => l.msg === 'console connected').map((l) => l.clientAddress)).toEqual(['127.0.0.61']);
  });

  it('trips each cap and the throttle with the behaviour it exists for, per client address', async () => {
    const direct = `http://127.0.0.1:${replicas[0]!.port}`;
    // The split below needs all three replicas in rotation. /readyz through the balancer answers
    // 200 from the others while the last one restarted still waits out HAProxy's rise (2 × 200 ms).
    await sleep(1_500);
    // One address hoarding consoles: two per replica (round robin over three), the seventh refused.
    const hoarded: WebSocket[] = [];
    for (let i = 0; i < 6; i++) hoarded.push(await liveConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession(direct))}`, '127.0.0.71'));
    const seventh = await openConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession(direct))}`, { localAddress: '127.0.0.71' });
    expect(seventh).toMatchObject({ code: 1013, reason: expect.stringContaining('MAX_CONSOLES_PER_CLIENT') });
    const neighbour = await openConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession(direct))}`, { localAddress: '127.0.0.72', untilMessages: 1 });
    expect(neighbour.messages).toHaveLength(1);
    hoarded.forEach((ws) => ws.close());

    // One session opened in many tabs (from different addresses): two per replica, then refused.
    const shared = await newSession(direct);
    const tabs: WebSocket[] = [];
    for (let i = 0; i < 6; i++) tabs.push(await liveConsole(`${balancerWs()}?ticket=${await ticketFor(shared)}`, `127.0.1.${i + 1}`));
    const tab = await openConsole(`${balancerWs()}?ticket=${await ticketFor(shared)}`, { localAddress: '127.0.1.9' });
    expect(tab).toMatchObject({ code: 1013, reason: expect.stringContaining('MAX_CONSOLES_PER_SESSION') });
    tabs.forEach((ws) => ws.close());

    // One address guessing tickets: three failures per replica, then 1013 before any ticket work,
    // while another address's good console opens.
    const forged = (await ticketFor(shared)).slice(0, -4) + 'AAAA';
    const codes: number[] = [];
    for (let i = 0; i < 12; i++) codes.push((await openConsole(`${balancerWs()}?ticket=${forged}`, { localAddress: '127.0.0.81' })).code ?? 0);
    expect(codes.slice(0, 9)).toEqual(Array(9).fill(4401));
    expect(codes.slice(9)).toEqual([1013, 1013, 1013]);
    const good = await openConsole(`${balancerWs()}?ticket=${await ticketFor(await newSession(direct))}`, { localAddress: '127.0.0.82', untilMessages: 1 });
    expect(good.messages).toHaveLength(1);
  }, 60_000);
});
