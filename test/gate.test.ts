import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../src/config.js';
import { migrateToLatest } from '../src/db/migrations.js';
import { openStore, type Store } from '../src/db/open.js';
import { allocatePort, portOf } from '../src/db/ports.js';
import { commitTarget, createSession, getSession } from '../src/db/sessions.js';
import { startDemoVncServer } from '../src/demo/demo-vnc.js';
import { startGate, type GateDeps } from '../src/fleet/gate.js';
import { createLogger } from '../src/ops/log.js';
import { createMetrics, type Metrics } from '../src/ops/metrics.js';
import { createRuntimeHook } from '../src/fleet/runtime-hook.js';
import { waitForSession } from '../src/console/wait.js';

const HOOK_SCRIPT = fileURLToPath(new URL('./fixtures/hook-script.mjs', import.meta.url));
const SECRET = 'gate-test-ticket-secret-at-least-32-bytes';
const CONTROL_TOKEN = 'gate-test-control-token-0123456789';
const OWNER = 'tenant-7-user-owner-secretish-abc123';

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Harness {
  store: Store;
  config: Config;
  metrics: Metrics;
  logs(): Record<string, any>[];
  raw(): string;
  record: string;
  xvncLog: string;
  startGate(overrides?: Partial<GateDeps>): { stop(): Promise<void> };
}

async function harness(env: Record<string, string> = {}, databaseUrl?: string): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'cg-gate-'));
  const record = join(dir, 'hook-calls.jsonl');
  const xvncLog = join(dir, 'xvnc.log');
  await writeFile(record, '');
  const config = loadConfig({
    DATA_DIR: join(dir, 'data'),
    ...(databaseUrl !== undefined ? { DATABASE_URL: databaseUrl } : {}),
    TICKET_SECRET: SECRET,
    CONTROL_TOKEN,
    TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
    NOVNC_READY_TIMEOUT_SECONDS: '2',
    NOVNC_READY_POLL_INTERVAL_SECONDS: '0.2',
    RUNTIME_HOOK_COMMAND: JSON.stringify([process.execPath, HOOK_SCRIPT, '--record', record, '--log', xvncLog]),
    RUNTIME_HOOK_TIMEOUT_SECONDS: '10',
    VNC_WS_PORT_START: '7100',
    VNC_WS_PORT_END: '7199',
    ...env,
  });
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  const log = createLogger('debug', sink);
  const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log, listen: true });
  cleanups.push(() => store.close());
  await migrateToLatest(store.db);
  const metrics = createMetrics({ defaultMetrics: false });
  const hook = createRuntimeHook(config.runtimeHookCommand, config.runtimeHookTimeoutSeconds * 1000, log, { secrets: [SECRET, CONTROL_TOKEN] });
  return {
    store,
    config,
    metrics,
    record,
    xvncLog,
    logs: () => lines.map((l) => JSON.parse(l)),
    raw: () => lines.join('\n'),
    startGate(overrides = {}) {
      const gate = startGate({ db: store.db, events: store.events, log, metrics, config, hook, timings: { scanMs: 500 }, ...overrides });
      cleanups.push(() => gate.stop());
      return gate;
    },
  };
}

async function hookCalls(h: Harness): Promise<{ action: string; session: Record<string, unknown> }[]> {
  return (await readFile(h.record, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function untilStatus(h: Harness, id: string, status: string, ms: number) {
  const end = Date.now() + ms;
  for (;;) {
    const row = await getSession(h.store.db, id);
    if (row?.status === status) return row;
    if (Date.now() > end) throw new Error(`session is ${row?.status}, expected ${status}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Debian's Xvnc (TigerVNC) on 127.0.0.1:`port`, stderr to `logFile`. Resolves once it exits or
 * answers on the port.
 */
async function startXvnc(port: number, logFile: string, extraArgs: string[] = []): Promise<{ child: ChildProcess; exited: Promise<number | null> }> {
  const display = 100 + Math.floor(Math.random() * 30_000);
  const { openSync } = await import('node:fs');
  const fd = openSync(logFile, 'a');
  const child = spawn('/usr/bin/Xvnc', [`:${display}`, '-rfbport', String(port), '-localhost', '-SecurityTypes', 'None', '-nolisten', 'tcp', '-geometry', '320x240', ...extraArgs], {
    stdio: ['ignore', fd, fd],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  cleanups.push(() => {
    child.kill('SIGKILL');
    return exited;
  });
  return { child, exited };
}

function ownerAndSecretsAbsent(h: Harness): void {
  const raw = h.raw();
  expect(raw).not.toContain(OWNER);
  expect(raw).not.toContain(SECRET);
  expect(raw).not.toContain(CONTROL_TOKEN);
}

describe('readiness gate: the three scenarios of the original design', { timeout: 20_000 }, () => {
  it('VNC server crashes on start: failed, diagnostics show it, teardown called, port released', async () => {
    const h = await harness();
    const port = await closedPort();
    // A real Xvnc given a bad argument exits at once, as a container whose VNC crashes would.
    const xvnc = await startXvnc(port, h.xvncLog, ['-no-such-option']);
    expect(await xvnc.exited).not.toBe(0);
    const session = await createSession(h.store.db, { protocol: 'vnc', ownerId: OWNER, gatingEnabled: true });
    const { port: consolePort } = await allocatePort(h.store.db, session.id, { start: 7100, end: 7199, maxSessions: 100, leaseSeconds: 3600, actor: 'test' });
    await commitTarget(h.store.db, session.id, { host: '127.0.0.1', port, path: null }, true);
    const waiting = waitForSession(h.store.db, h.store.events, session.id, { budgetMs: 15_000, gatingEnabled: true });
    h.startGate();

    await expect(waiting).rejects.toMatchObject({ code: 'SESSION_ENDED', message: expect.stringMatching(/^the console failed: not ready after 2\.\d s: TCP connect refused$/) });
    const row = await untilStatus(h, session.id, 'failed', 1_000);
    expect(row.finished_at).not.toBeNull();
    const diagnostics = row.diagnostics as any;
    expect(diagnostics.runtime.ok).toBe(true);
    expect(diagnostics.runtime.output).toContain('Unrecognized option: -no-such-option');
    expect(diagnostics.probe.attempts).toBeGreaterThan(2);
    expect(diagnostics.probe.history.at(-1)).toMatchObject({ ok: false, reason: 'TCP connect refused' });
    expect(await portOf(h.store.db, session.id)).toBeUndefined();

    // Teardown runs after the failure is recorded; give the hook its moment.
    await expect.poll(async () => (await hookCalls(h)).map((c) => c.action), { timeout: 5_000 }).toEqual(['diagnostics', 'teardown']);
    const [call] = await hookCalls(h);
    expect(call!.session).toMatchObject({ sessionId: session.id, ownerId: OWNER, port: consolePort, target: { host: '127.0.0.1', port } });

    await expect.poll(() => h.logs().some((l) => l.msg === 'ended session cleaned'), { timeout: 5_000 }).toBe(true);
    const logs = h.logs().filter((l) => l.sessionId === session.id);
    const failed = logs.find((l) => l.msg === 'readiness probe failed: session marked failed')!;
    expect(failed).toMatchObject({ level: 50, owner: '****abc123', port, reason: expect.stringContaining('TCP connect refused') });
    expect(logs.find((l) => l.msg === 'console port released')).toMatchObject({ port: consolePort });
    expect(logs.find((l) => l.msg === 'diagnostics collected for the failed session')?.diagnostics).toContain('Unrecognized option');
    ownerAndSecretsAbsent(h);
  });

  it('port not listening: refused probes, failed at the timeout and not before', async () => {
    const h = await harness();
    const port = await closedPort();
    const session = await createSession(h.store.db, { protocol: 'vnc', ownerId: OWNER, gatingEnabled: true });
    const committed = await commitTarget(h.store.db, session.id, { host: '127.0.0.1', port, path: null }, true);
    h.startGate();
    await new Promise((r) => setTimeout(r, 1_200));
    expect((await getSession(h.store.db, session.id))!.status).toBe('provisioning');
    const row = await untilStatus(h, session.id, 'failed', 5_000);
    const took = new Date(row.finished_at!).getTime() - new Date(committed.updated_at).getTime();
    expect(took).toBeGreaterThanOrEqual(2_000);
    expect(took).toBeLessThan(3_500);
    expect(row.failure_reason).toMatch(/^not ready after 2\.\d s: TCP connect refused$/);
    const refused = (await h.metrics.probes.get()).values.find((v) => v.labels.result === 'failed')!.value;
    expect(refused).toBeGreaterThanOrEqual(3);
    ownerAndSecretsAbsent(h);
  });

  it('gives a target committed again with plain SQL a deadline of its own', async () => {
    const h = await harness();
    const [first, second] = [await closedPort(), await closedPort()];
    const session = await createSession(h.store.db, { protocol: 'vnc', ownerId: OWNER, gatingEnabled: true });
    await commitTarget(h.store.db, session.id, { host: '127.0.0.1', port: first, path: null }, true);
    h.startGate();
    await new Promise((r) => setTimeout(r, 1_500));
    await sql`update console_sessions set target_port = ${second}, status = 'provisioning' where id = ${session.id}`.execute(h.store.db);
    const recommitted = await getSession(h.store.db, session.id);
    const row = await untilStatus(h, session.id, 'failed', 6_000);
    // Two seconds (the timeout) from the second commit, not from the first.
    const took = new Date(row.finished_at!).getTime() - new Date(recommitted!.provisioning_since!).getTime();
    expect(took).toBeGreaterThanOrEqual(2_000);
    expect(took).toBeLessThan(3_500);
    expect(row.failure_reason).toMatch(/^not ready after 2\.\d s: TCP connect refused$/);
    expect(row.target_port).toBe(second);
  });

  it('VNC slow to start (real Xvnc 5 s after the commit): ready, the waiting upgrade wakes, no false failure', async () => {
    const h = await harness({ NOVNC_READY_TIMEOUT_SECONDS: '30', NOVNC_READY_POLL_INTERVAL_SECONDS: '1' });
    const session = await createSession(h.store.db, { protocol: 'vnc', ownerId: OWNER, gatingEnabled: true });
    h.startGate();
    let port = 20_000 + Math.floor(Math.random() * 30_000);
    const committed = await commitTarget(h.store.db, session.id, { host: '127.0.0.1', port, path: null }, true);
    const waiting = waitForSession(h.store.db, h.store.events, session.id, { budgetMs: 25_000, gatingEnabled: true });
    await new Promise((r) => setTimeout(r, 5_000));
    expect((await getSession(h.store.db, session.id))!.status).toBe('provisioning');
    for (let attempt = 0; ; attempt++) {
      const xvnc = await startXvnc(port, h.xvncLog);
      const outcome = await Promise.race([xvnc.exited.then(() => 'exited'), new Promise((r) => setTimeout(r, 1_000, 'running'))]);
      if (outcome === 'running') break;
      // The random port was taken: the platform would commit the new address, and so do we.
      expect(attempt).toBeLessThan(5);
      port = 20_000 + Math.floor(Math.random() * 30_000);
      await commitTarget(h.store.db, session.id, { host: '127.0.0.1', port, path: null }, true);
    }
    const ready = await waiting;
    expect(ready.status).toBe('ready');
    const readyAfter = new Date(ready.ready_at!).getTime() - new Date(committed.updated_at).getTime();
    expect(readyAfter).toBeGreaterThanOrEqual(5_000);
    const succeeded = h.logs().find((l) => l.msg.startsWith('readiness probe succeeded'))!;
    expect(succeeded).toMatchObject({ sessionId: session.id, level: 30, port });
    expect(succeeded.msg).toMatch(/elapsed \d+\.\d s/);
    expect(succeeded.elapsedMs).toBeGreaterThanOrEqual(5_000);
    expect(h.logs().some((l) => /failed/.test(l.msg) && l.msg !== 'readiness probe attempt failed')).toBe(false);
    expect(await hookCalls(h)).toEqual([]);
    ownerAndSecretsAbsent(h);
  }, 40_000);
});

describe('readiness gate', { timeout: 15_000 }, () => {
  it('keeps an open port that never sends a banner not ready, then fails it', async () => {
    const h = await harness();
    const open = new Set<Socket>();
    const silent = createServer((s) => {
      open.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      open.forEach((s) => s.destroy());
      return new Promise((resolve) => silent.close(resolve));
    });
    const port = (silent.address() as AddressInfo).port;
    const session = await createSession(h.store.db, { protocol: 'vnc', target: { host: '127.0.0.1', port, path: null }, gatingEnabled: true });
    h.startGate();
    await new Promise((r) => setTimeout(r, 1_000));
    expect((await getSession(h.store.db, session.id))!.status).toBe('provisioning');
    const row = await untilStatus(h, session.id, 'failed', 6_000);
    expect(row.failure_reason).toMatch(/no RFB banner within 1 s$/);
  });

  it('with gating disabled, makes a target committed with plain SQL ready without probing it', async () => {
    const h = await harness({ NOVNC_READY_GATING_ENABLED: 'false' });
    const port = await closedPort();
    const session = await createSession(h.store.db, { protocol: 'vnc', gatingEnabled: true });
    // A backend committing with plain SQL, as the README allows.
    await sql`update console_sessions set target_host = '127.0.0.1', target_port = ${port}, status = 'provisioning' where id = ${session.id}`.execute(h.store.db);
    h.startGate();
    await expect.poll(async () => (await getSession(h.store.db, session.id))!.status, { timeout: 10_000 }).toBe('ready');
    const row = (await getSession(h.store.db, session.id))!;
    expect(row.probe_owner).toBeNull();
    expect(row.ready_at).not.toBeNull();
    // Nothing was probed: the port is closed, and a probe would have failed it.
    expect((await h.metrics.probes.get()).values).toEqual([]);
    expect(h.logs().some((l) => /gating disabled/.test(String(l.msg)))).toBe(true);
  });

  it('marks a target committed with plain SQL ready, woken by the trigger rather than the scan', async () => {
    const h = await harness();
    const vnc = await startDemoVncServer();
    cleanups.push(() => vnc.close());
    h.startGate({ timings: { scanMs: 60_000 } });
    await new Promise((r) => setTimeout(r, 200));
    const session = await createSession(h.store.db, { protocol: 'vnc', gatingEnabled: true });
    const started = Date.now();
    await sql`update console_sessions set target_host = '127.0.0.1', target_port = ${vnc.port}, status = 'provisioning' where id = ${session.id}`.execute(h.store.db);
    await untilStatus(h, session.id, 'ready', 2_000);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('fails a target outside TARGET_ALLOWED_CIDRS at once, without waiting for the timeout', async () => {
    const h = await harness({ NOVNC_READY_TIMEOUT_SECONDS: '60' });
    const session = await createSession(h.store.db, { protocol: 'vnc', target: { host: '10.1.2.3', port: 5900, path: null }, gatingEnabled: true });
    h.startGate();
    const row = await untilStatus(h, session.id, 'failed', 3_000);
    expect(row.failure_reason).toBe('the VM address 10.1.2.3 is outside TARGET_ALLOWED_CIDRS');
  });

  it('a gate restart does not extend the deadline', async () => {
    const h = await harness({ NOVNC_READY_TIMEOUT_SECONDS: '3' });
    const port = await closedPort();
    const session = await createSession(h.store.db, { protocol: 'vnc', gatingEnabled: true });
    const committed = await commitTarget(h.store.db, session.id, { host: '127.0.0.1', port, path: null }, true);
    const first = h.startGate();
    await new Promise((r) => setTimeout(r, 1_500));
    await first.stop();
    expect((await getSession(h.store.db, session.id))!).toMatchObject({ status: 'provisioning', probe_lease_until: null });
    h.startGate();
    const row = await untilStatus(h, session.id, 'failed', 5_000);
    const took = new Date(row.finished_at!).getTime() - new Date(committed.updated_at).getTime();
    expect(took).toBeLessThan(4_500);
  });

  it('stops promptly while probing', async () => {
    const h = await harness({ NOVNC_READY_TIMEOUT_SECONDS: '60' });
    const port = await closedPort();
    await createSession(h.store.db, { protocol: 'vnc', target: { host: '127.0.0.1', port, path: null }, gatingEnabled: true });
    const gate = h.startGate();
    await new Promise((r) => setTimeout(r, 500));
    const started = Date.now();
    await gate.stop();
    expect(Date.now() - started).toBeLessThan(500);
  });
});

// Two gates with separate stores (separate connection pools) against one PostgreSQL database when
// test/helpers/postgres.ts is available; otherwise two gates sharing the embedded database.
const POSTGRES_HELPER = fileURLToPath(new URL('./helpers/postgres.ts', import.meta.url));

describe('several gates against one database', () => {
  it('probe each session once at a time and transition it exactly once', async () => {
    let databaseUrl: string | undefined;
    if (existsSync(POSTGRES_HELPER)) {
      const { createTestDatabase } = (await import(POSTGRES_HELPER)) as { createTestDatabase(): Promise<{ url: string; drop(): Promise<void> }> };
      const database = await createTestDatabase();
      cleanups.push(() => database.drop());
      databaseUrl = database.url;
    }
    const a = await harness({}, databaseUrl);
    const b = databaseUrl === undefined ? a : await harness({}, databaseUrl);
    const vnc = await startDemoVncServer();
    cleanups.push(() => vnc.close());
    const ready: string[] = [];
    const failing: string[] = [];
    for (let i = 0; i < 8; i++) {
      const s = await createSession(a.store.db, { protocol: 'vnc', ownerId: OWNER, gatingEnabled: true });
      ready.push(s.id);
    }
    const dead = await closedPort();
    for (let i = 0; i < 4; i++) {
      const s = await createSession(a.store.db, { protocol: 'vnc', ownerId: OWNER, gatingEnabled: true });
      failing.push(s.id);
    }
    a.startGate();
    b.startGate();
    b.startGate();
    await Promise.all([
      ...ready.map((id) => commitTarget(a.store.db, id, { host: '127.0.0.1', port: vnc.port, path: null }, true)),
      ...failing.map((id) => commitTarget(b.store.db, id, { host: '127.0.0.1', port: dead, path: null }, true)),
    ]);
    for (const id of ready) await untilStatus(a, id, 'ready', 5_000);
    for (const id of failing) await untilStatus(a, id, 'failed', 8_000);
    await expect.poll(async () => (await hookCalls(a)).length + (a === b ? 0 : (await hookCalls(b)).length), { timeout: 5_000 }).toBe(8);
    // The record is written when a hook starts; its outcome is logged once it has exited.
    const allLogs = () => (a === b ? a.logs() : [...a.logs(), ...b.logs()]);
    await expect.poll(() => allLogs().filter((l) => l.msg === 'ended session cleaned').length, { timeout: 5_000 }).toBe(4);

    const logs = allLogs();
    for (const id of ready) expect(logs.filter((l) => l.sessionId === id && l.msg.startsWith('readiness probe succeeded'))).toHaveLength(1);
    for (const id of [...ready, ...failing]) {
      // One prober per session: every attempt and the decision come from the same gate.
      const gates = new Set(logs.filter((l) => l.sessionId === id && l.component === 'gate').map((l) => l.gate));
      expect(gates.size).toBe(1);
    }
    for (const id of failing) {
      expect(logs.filter((l) => l.sessionId === id && l.msg === 'readiness probe failed: session marked failed')).toHaveLength(1);
      expect(logs.filter((l) => l.sessionId === id && l.msg === 'ended session cleaned')).toHaveLength(1);
    }
    const transitions = async (h: Harness) => (await h.metrics.sessionTransitions.get()).values.reduce((n, v) => n + v.value, 0);
    expect(a === b ? await transitions(a) : (await transitions(a)) + (await transitions(b))).toBe(12);
  }, 30_000);
});
