// The reconciler, rule by rule, on PostgreSQL 15 and on the embedded database, each with the real
// peers that make the rule true: a dead Xvnc, a session stopped by plain SQL, a holder killed
// with SIGKILL, a runtime hook reporting an orphan. Then a dry run, the metrics, and three
// reconcilers started at once.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../src/config.js';
import { migrateToLatest } from '../src/db/migrations.js';
import { openStore, type Store } from '../src/db/open.js';
import { allocatePort } from '../src/db/ports.js';
import { createSession } from '../src/db/sessions.js';
import { runPass, startReconciler, type ReconcilerDeps } from '../src/fleet/reconciler.js';
import { createRuntimeHook } from '../src/fleet/runtime-hook.js';
import { createFleetMetrics } from '../src/ops/fleet-metrics.js';
import { createLogger } from '../src/ops/log.js';
import { runCli } from './helpers/cli.js';
import { startTestGateway } from './helpers/gateway.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';
import { startXvnc } from './helpers/xvnc.js';

const HOOK_SCRIPT = fileURLToPath(new URL('./fixtures/hook-script.mjs', import.meta.url));
const ALLOCATOR = fileURLToPath(new URL('./fixtures/allocate-ports.mjs', import.meta.url));
const SILENT = createLogger('silent');
const ENV = {
  TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
  SESSION_PENDING_TIMEOUT_SECONDS: '1',
  NOVNC_READY_TIMEOUT_SECONDS: '1',
  RECONCILIATION_UNREACHABLE_PROBES: '2',
  RECONCILIATION_NAMESPACES: 'labs-a,labs-b',
  VNC_WS_PORT_START: '24000',
  VNC_WS_PORT_END: '24099',
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Calls {
  action: string;
  session: { sessionId?: string; port?: number | null };
  namespaces?: string[];
}

for (const kind of ['postgres', 'embedded'] as const) {
  describe(`reconciler rules on ${kind === 'postgres' ? 'PostgreSQL' : 'the embedded database'}`, { timeout: 90_000 }, () => {
    let database: TestDatabase | undefined;
    let dir: string;
    let store: Store;
    let config: Config;
    let record: string;
    let resources: string;

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'cg-reconcile-'));
      database = kind === 'postgres' ? await createTestDatabase() : undefined;
      config = loadConfig({ ...ENV, ...(database ? { DATABASE_URL: database.url } : { DATA_DIR: join(dir, 'data') }) });
      store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log: SILENT });
      await migrateToLatest(store.db);
    }, 180_000); // the embedded database's first start is slow on a busy machine
    afterAll(async () => {
      await store?.close();
      await database?.drop();
      await rm(dir, { recursive: true, force: true });
    });
    beforeEach(async () => {
      await sql`truncate console_sessions, consumed_tickets, console_audit, console_port_conflicts cascade`.execute(store.db);
      record = join(dir, `calls-${Date.now()}.jsonl`);
      resources = join(dir, `resources-${Date.now()}.json`);
    });

    const hook = (mode = 'ok') => createRuntimeHook([process.execPath, HOOK_SCRIPT, '--record', record, '--resources', resources, '--mode', mode], 20_000, SILENT)!;
    const deps = (extra: Partial<ReconcilerDeps> = {}): ReconcilerDeps => ({ db: store.db, kind: store.kind, config, log: SILENT, ...extra });
    const calls = async (): Promise<Calls[]> => (await readFile(record, 'utf8').catch(() => '')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const row = (id: string) => store.db.selectFrom('console_sessions').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    const audit = (id: string) => store.db.selectFrom('console_audit').selectAll().where('session_id', '=', id).orderBy('id').execute();
    const newSession = () => createSession(store.db, { protocol: 'vnc', gatingEnabled: true });

    it('forgets consumed tickets an hour past their expiry and keeps younger ones', async () => {
      const session = await newSession();
      await sql`insert into consumed_tickets (jti, session_id, expires_at) values
        ('old', ${session.id}::uuid, now() - interval '2 hours'), ('young', ${session.id}::uuid, now() - interval '10 minutes')`.execute(store.db);
      const summary = await runPass(deps());
      expect(summary.rules.expired_tickets).toEqual({ found: 1, cleaned: 1, failed: 0 });
      expect((await store.db.selectFrom('consumed_tickets').select('jti').execute()).map((r) => r.jti)).toEqual(['young']);
    });

    it('fails a pending session past SESSION_PENDING_TIMEOUT_SECONDS and cleans it in the same pass', async () => {
      const session = await newSession();
      await sleep(1_200);
      const summary = await runPass(deps({ hook: hook() }));
      expect(summary.rules.stale_pending).toEqual({ found: 1, cleaned: 1, failed: 0 });
      expect(summary.rules.uncleaned_sessions).toEqual({ found: 1, cleaned: 1, failed: 0 });
      const after = await row(session.id);
      expect(after).toMatchObject({ status: 'failed', failure_reason: 'no VM address was committed within 1 s', cleanup_reason: 'pending_timeout' });
      expect(after.cleanup_completed_at).not.toBeNull();
      expect((await calls()).filter((c) => c.action === 'teardown').map((c) => c.session.sessionId)).toEqual([session.id]);
    });

    it('fails a provisioning session no gate is probing past the readiness timeout, and leaves a probed one alone', async () => {
      const [abandoned, probed] = [await newSession(), await newSession()];
      await sql`update console_sessions set target_host = '127.0.0.1', target_port = 5999 where id in (${abandoned.id}::uuid, ${probed.id}::uuid)`.execute(store.db);
      await sql`update console_sessions set probe_owner = 'gate-elsewhere', probe_lease_until = now() + interval '1 minute' where id = ${probed.id}::uuid`.execute(store.db);
      await sleep(1_200);
      const summary = await runPass(deps());
      expect(summary.rules.abandoned_provisioning).toEqual({ found: 1, cleaned: 1, failed: 0 });
      expect(await row(abandoned.id)).toMatchObject({ status: 'failed', cleanup_reason: 'provisioning_abandoned' });
      expect((await row(probed.id)).status).toBe('provisioning');
    });

    it('cleans a session stopped by plain SQL exactly once: teardown with its port, port released', async () => {
      const session = await newSession();
      const { port } = await allocatePort(store.db, session.id, { start: 24000, end: 24099, maxSessions: 100, leaseSeconds: 600, actor: 'test' });
      await sql`update console_sessions set status = 'stopped' where id = ${session.id}::uuid`.execute(store.db);
      const first = await runPass(deps({ hook: hook() }));
      const second = await runPass(deps({ hook: hook() }));
      expect(first.rules.uncleaned_sessions).toEqual({ found: 1, cleaned: 1, failed: 0 });
      expect(second.rules.uncleaned_sessions).toEqual({ found: 0, cleaned: 0, failed: 0 });
      expect((await calls()).filter((c) => c.action === 'teardown')).toEqual([expect.objectContaining({ session: expect.objectContaining({ sessionId: session.id, port }) })]);
      expect(await row(session.id)).toMatchObject({ cleanup_reason: 'stopped', cleanup_completed_at: expect.any(Date) });
      expect(await store.db.selectFrom('console_ports').selectAll().execute()).toEqual([]);
      expect((await audit(session.id)).map((a) => a.action)).toEqual(['cleanup']);
    });

    it('retries a failed teardown on the next pass and never blocks the other sessions', async () => {
      const [a, b] = [await newSession(), await newSession()];
      await sql`update console_sessions set status = 'stopped' where id in (${a.id}::uuid, ${b.id}::uuid)`.execute(store.db);
      const failing = await runPass(deps({ hook: hook('fail') }));
      expect(failing.rules.uncleaned_sessions).toEqual({ found: 2, cleaned: 0, failed: 2 });
      expect(await row(a.id)).toMatchObject({ cleanup_completed_at: null, cleanup_attempts: 1, cleanup_error: 'the runtime hook reported failure' });
      const healed = await runPass(deps({ hook: hook() }));
      expect(healed.rules.uncleaned_sessions).toEqual({ found: 2, cleaned: 2, failed: 0 });
      expect((await audit(a.id)).map((r) => r.action)).toEqual(['teardown_failed', 'cleanup']);
    });

    it('releases the lease of a holder killed with SIGKILL once it has expired', async () => {
      const session = await newSession();
      // Ready (without a target to probe), so no other rule ends it and its cleanup releases the port first.
      await sql`update console_sessions set status = 'ready' where id = ${session.id}::uuid`.execute(store.db);
      if (kind === 'postgres') {
        const child = spawn(process.execPath, [ALLOCATOR, '--hold'], {
          env: { PATH: process.env.PATH ?? '', DATABASE_URL: database!.url, VNC_WS_PORT_START: '24000', VNC_WS_PORT_END: '24099', PORT_LEASE_SECONDS: '1' },
          stdio: ['pipe', 'pipe', 'inherit'],
        });
        child.stdin.end(JSON.stringify([session.id]));
        await new Promise<void>((resolve) => child.stdout.on('data', (d) => String(d).includes('holding') && resolve()));
        child.kill('SIGKILL');
      } else {
        // The embedded database belongs to this process: the holder is this process's own lease.
        await allocatePort(store.db, session.id, { start: 24000, end: 24099, maxSessions: 100, leaseSeconds: 1, actor: 'test' });
      }
      const early = await runPass(deps());
      expect(early.rules.stale_port_leases!.found).toBe(0);
      await sleep(1_300);
      const summary = await runPass(deps());
      expect(summary.rules.stale_port_leases).toEqual({ found: 1, cleaned: 1, failed: 0 });
      expect(await audit(session.id)).toEqual([expect.objectContaining({ action: 'release_port', reason: 'port 24000 released: its lease expired', rule: 'stale_port_leases' })]);
    });

    it('stops a ready session whose Xvnc died after the configured passes, and keeps the live one', async () => {
      const [live, dead] = await Promise.all([startXvnc(), startXvnc()]);
      try {
        const [a, b] = [await newSession(), await newSession()];
        for (const [id, port] of [[a.id, live.port], [b.id, dead.port]] as const) {
          await sql`update console_sessions set target_host = '127.0.0.1', target_port = ${port}, status = 'ready' where id = ${id}::uuid`.execute(store.db);
        }
        await dead.close();
        const first = await runPass(deps());
        expect(first.rules.unreachable_sessions).toEqual({ found: 0, cleaned: 0, failed: 0 });
        expect(await row(b.id)).toMatchObject({ status: 'ready', unreachable_probes: 1 });
        const second = await runPass(deps());
        expect(second.rules.unreachable_sessions).toEqual({ found: 1, cleaned: 1, failed: 0 });
        expect(await row(b.id)).toMatchObject({ status: 'stopped', cleanup_reason: 'orphaned_resource', cleanup_completed_at: expect.any(Date) });
        expect(await row(a.id)).toMatchObject({ status: 'ready', unreachable_probes: 0 });
        expect((await audit(b.id)).map((r) => r.action)).toEqual(['stop_session', 'cleanup']);
      } finally {
        await live.close();
      }
    });

    it('tears down runtime resources of unknown sessions and stops sessions whose resources are gone', async () => {
      const [listed, gone] = [await newSession(), await newSession()];
      await sql`update console_sessions set status = 'ready' where id in (${listed.id}::uuid, ${gone.id}::uuid)`.execute(store.db);
      const orphan = '0f0f0f0f-0000-4000-8000-00000000beef';
      await writeFile(resources, JSON.stringify([{ sessionId: listed.id, kind: 'pod' }, { sessionId: orphan, kind: 'pod' }, { name: 'unlabelled' }]));
      const first = await runPass(deps({ hook: hook() }));
      expect(first.rules.runtime_orphans).toEqual({ found: 1, cleaned: 1, failed: 0 });
      const second = await runPass(deps({ hook: hook() }));
      expect(second.rules.runtime_orphans).toEqual({ found: 2, cleaned: 2, failed: 0 });
      expect(await row(gone.id)).toMatchObject({ status: 'stopped', cleanup_reason: 'orphaned_resource' });
      expect((await row(listed.id)).status).toBe('ready');
      const made = await calls();
      expect(made.filter((c) => c.action === 'list').every((c) => c.namespaces?.join() === 'labs-a,labs-b')).toBe(true);
      const torn = made.filter((c) => c.action === 'teardown').map((c) => c.session.sessionId);
      expect(torn.filter((id) => id === orphan)).toHaveLength(2); // torn down each pass while the runtime still lists it
      expect(torn.filter((id) => id === gone.id)).toHaveLength(1);
      expect(torn).not.toContain(listed.id);
    });

    it('a dry run changes nothing and records each decision it did not carry out', async () => {
      const [pending, stopped] = [await newSession(), await newSession()];
      await allocatePort(store.db, stopped.id, { start: 24000, end: 24099, maxSessions: 100, leaseSeconds: 600, actor: 'test' });
      await sql`update console_sessions set status = 'stopped' where id = ${stopped.id}::uuid`.execute(store.db);
      await sql`insert into consumed_tickets (jti, session_id, expires_at) values ('old', ${pending.id}::uuid, now() - interval '2 hours')`.execute(store.db);
      await sleep(1_200);
      const before = await sql`select id, status, cleanup_completed_at, unreachable_probes from console_sessions order by id`.execute(store.db);
      const summary = await runPass(deps({ hook: hook() }), { dryRun: true });
      expect(summary).toMatchObject({ dryRun: true, rules: { expired_tickets: { found: 1, cleaned: 0 }, stale_pending: { found: 1, cleaned: 0 }, uncleaned_sessions: { found: 1, cleaned: 0 }, stale_port_leases: { found: 1, cleaned: 0 } } });
      expect((await sql`select id, status, cleanup_completed_at, unreachable_probes from console_sessions order by id`.execute(store.db)).rows).toEqual(before.rows);
      expect(await store.db.selectFrom('console_ports').select('port').execute()).toHaveLength(1);
      expect(await store.db.selectFrom('consumed_tickets').select('jti').execute()).toHaveLength(1);
      expect((await calls()).filter((c) => c.action === 'teardown')).toEqual([]);
      const decisions = await store.db.selectFrom('console_audit').selectAll().orderBy('id').execute();
      expect(decisions.every((d) => d.dry_run)).toBe(true);
      expect(decisions.map((d) => `${d.rule}:${d.action}`).sort()).toEqual(
        ['expired_tickets:forget_tickets', 'stale_pending:fail_session', 'uncleaned_sessions:cleanup', 'stale_port_leases:release_port'].sort(),
      );
    });

    it('counts its passes, findings and last success in the metrics', async () => {
      const metrics = createFleetMetrics([new Registry()]);
      const value = async (name: string, labels: Record<string, string> = {}) =>
        ((await (metrics as any)[name].get()).values as { labels: Record<string, string>; value: number }[])
          .filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
          .reduce((sum, v) => sum + v.value, 0);
      await newSession();
      await sleep(1_200);
      const runs = await value('reconcilerRuns', { result: 'ok' });
      const found = await value('reconcilerFound', { rule: 'stale_pending' });
      await runPass(deps({ metrics }));
      expect((await value('reconcilerRuns', { result: 'ok' })) - runs).toBe(1);
      expect((await value('reconcilerFound', { rule: 'stale_pending' })) - found).toBe(1);
      expect(await value('reconcilerCleaned', { rule: 'uncleaned_sessions' })).toBe(1);
      expect(await value('reconcilerLastSuccess')).toBeGreaterThan(Date.now() / 1000 - 60);
    });

    it('runs one pass at a time in a process: a pass asked for during another is skipped', async () => {
      const reconciler = startReconciler(deps(), 3_600_000);
      try {
        await reconciler.ready;
        const results = await Promise.all([reconciler.runOnce(), reconciler.runOnce(), reconciler.runOnce()]);
        expect(results.filter((r) => r.skipped === undefined)).toHaveLength(1);
        expect(results.filter((r) => r.skipped !== undefined)).toHaveLength(2);
      } finally {
        await reconciler.stop();
      }
    });
  });
}

describe('reconcile command on PostgreSQL', { timeout: 120_000 }, () => {
  let database: TestDatabase;
  let dir: string;
  let store: Store;

  beforeAll(async () => {
    database = await createTestDatabase();
    dir = await mkdtemp(join(tmpdir(), 'cg-reconcile-cli-'));
    store = await openStore({ databaseUrl: database.url, dataDir: '', log: SILENT });
    await migrateToLatest(store.db);
  });
  afterAll(async () => {
    await store?.close();
    await database?.drop();
    await rm(dir, { recursive: true, force: true });
  });

  it('three reconcilers started at once do each action once, all by one actor', async () => {
    const record = join(dir, 'three.jsonl');
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await createSession(store.db, { protocol: 'vnc', gatingEnabled: true })).id);
    await sql`update console_sessions set status = 'stopped'`.execute(store.db);
    const env = { DATABASE_URL: database.url, RUNTIME_HOOK_COMMAND: JSON.stringify([process.execPath, HOOK_SCRIPT, '--record', record]), LOG_LEVEL: 'silent' };
    const runs = await Promise.all([0, 1, 2].map(() => runCli(['reconcile', '--once'], env, 90_000)));
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0]);
    const summaries = runs.map((r) => JSON.parse(r.stdout));
    for (const s of summaries) expect(s).toEqual(expect.objectContaining({ dryRun: false, durationMs: expect.any(Number), rules: expect.any(Object) }));
    expect(summaries.reduce((n, s) => n + (s.rules.uncleaned_sessions?.cleaned ?? 0), 0)).toBe(6);
    const teardowns = (await readFile(record, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((c) => c.action === 'teardown');
    expect(teardowns.map((c) => c.session.sessionId).sort()).toEqual([...ids].sort());
    const actions = await store.db.selectFrom('console_audit').select(['actor', 'session_id', 'action']).where('dry_run', '=', false).execute();
    expect(actions).toHaveLength(6);
    expect(new Set(actions.map((a) => a.actor)).size).toBe(1);
    expect(actions[0]!.actor).toMatch(/^reconciler@.+:\d+$/);
  });

  it('serve runs the reconciler in-process and its metrics move on /metrics', async () => {
    const gateway = await startTestGateway({ RECONCILIATION_INTERVAL: '3600', SESSION_PENDING_TIMEOUT_SECONDS: '1' }, database.url);
    try {
      const scrape = async (line: string) => {
        const text = await (await fetch(`${gateway.url}/metrics`)).text();
        return Number(text.split('\n').find((l) => l.startsWith(line))?.split(' ').at(-1) ?? 0);
      };
      await gateway.running.reconciler!.ready;
      const runs = await scrape('console_gateway_reconciler_runs_total{result="ok"}');
      expect(runs).toBeGreaterThanOrEqual(1);
      const found = await scrape('console_gateway_reconciler_found_total{rule="stale_pending"}');
      await createSession(store.db, { protocol: 'vnc', gatingEnabled: true });
      await sleep(1_200);
      expect((await gateway.running.reconciler!.runOnce()).rules.stale_pending).toEqual({ found: 1, cleaned: 1, failed: 0 });
      expect((await scrape('console_gateway_reconciler_runs_total{result="ok"}')) - runs).toBe(1);
      expect((await scrape('console_gateway_reconciler_found_total{rule="stale_pending"}')) - found).toBe(1);
      expect(await scrape('console_gateway_reconciler_last_success_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
      expect(await scrape('console_gateway_reconciler_duration_seconds_count')).toBeGreaterThanOrEqual(2);
    } finally {
      await gateway.stop();
    }
  });

  it('--once exits 1 when an action failed, and --dry-run prints its summary without acting', async () => {
    const session = await createSession(store.db, { protocol: 'vnc', gatingEnabled: true });
    await sql`update console_sessions set status = 'failed' where id = ${session.id}::uuid`.execute(store.db);
    const env = { DATABASE_URL: database.url, LOG_LEVEL: 'silent' };
    const dry = await runCli(['reconcile', '--once', '--dry-run'], env, 90_000);
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.stdout)).toMatchObject({ dryRun: true, rules: { uncleaned_sessions: { found: 1, cleaned: 0, failed: 0 } } });
    const failing = await runCli(['reconcile', '--once'], { ...env, RUNTIME_HOOK_COMMAND: JSON.stringify([process.execPath, HOOK_SCRIPT, '--mode', 'fail']) }, 90_000);
    expect(failing.code).toBe(1);
    expect(JSON.parse(failing.stdout).rules.uncleaned_sessions).toEqual({ found: 1, cleaned: 0, failed: 1 });
  });
});
