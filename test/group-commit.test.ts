// Group commit on PostgreSQL: concurrent ticket presentations share one statement, and exactly-once
// still holds across processes under a heavy concurrent replay; the live-console registry's adds
// and removals are group-committed the same way and keep their answers.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintTicket } from '../src/console/ticket.js';
import { migrateToLatest } from '../src/db/migrations.js';
import type { Database } from '../src/db/schema.js';
import { createSession } from '../src/db/sessions.js';
import { GroupCommit } from '../src/db/group-commit.js';
import { consumeTickets } from '../src/db/tickets.js';
import { registerExclusiveConsole, unregisterConsoles } from '../src/db/live-consoles.js';
import { Consoles } from '../src/console/consoles.js';
import { LiveRegistry } from '../src/console/live-registry.js';
import { SessionEvents } from '../src/db/events.js';
import { createLogger } from '../src/ops/log.js';
import { createTestDatabase, type TestDatabase } from './helpers/postgres.js';

const SECRET = 'group-commit-secret-of-at-least-32-bytes';
const PRESENTER = resolve(import.meta.dirname, 'fixtures/present-tickets.mjs');

let database: TestDatabase;
let db: Kysely<Database>;
let statements = 0;
let registryStatements = 0;
let sessionId: string;
let dir: string;

beforeAll(async () => {
  database = await createTestDatabase();
  db = new Kysely<Database>({
    dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url, max: 4, connectionTimeoutMillis: 10_000 }) }),
    log: (event) => void (event.query.sql.includes('consumed_tickets') && statements++, event.query.sql.includes('console_live') && registryStatements++),
  });
  await migrateToLatest(db);
  sessionId = (await createSession(db, { protocol: 'vnc', target: { host: '127.0.0.1', port: 5900, path: null }, gatingEnabled: false })).id;
  dir = await mkdtemp(join(tmpdir(), 'cg-group-commit-'));
}, 60_000);
afterAll(async () => {
  await db?.destroy();
  await database?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const ticketBatcher = () => new GroupCommit((batch: Parameters<typeof consumeTickets>[1]) => consumeTickets(db, batch));
const expiresAt = () => new Date(Date.now() + 60_000);
const newSession = async () => (await createSession(db, { protocol: 'vnc', target: { host: '127.0.0.1', port: 5900, path: null }, gatingEnabled: false })).id;

/** Starts one presenting process; resolves once it is ready to present. */
function presenter(file: string, copies: number, order = 'forward') {
  const child = spawn(process.execPath, [PRESENTER, database.url, SECRET, file, String(copies), order], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const lines = createInterface({ input: child.stdout });
  const next = () =>
    new Promise<string>((resolve, reject) => {
      lines.once('line', resolve);
      child.once('exit', (code) => reject(new Error(`presenter exited with ${code}: ${stderr}`)));
    });
  return { child, ready: next(), result: () => next().then((line) => JSON.parse(line) as { won: string[]; used: number; failed: number }) };
}

describe('ticket consumption with group commit', () => {
  it('combines consumes arriving in the same tick into one statement that reads the session too', async () => {
    const batcher = ticketBatcher();
    const before = statements;
    const results = await Promise.all(Array.from({ length: 100 }, () => batcher.submit({ jti: randomUUID(), sessionId, expiresAt: expiresAt() })));
    expect(statements - before).toBe(1);
    expect(results.every((r) => r.won && r.session?.id === sessionId)).toBe(true);
  });

  it('lets only the first of the same ticket in one batch win, and answers an unknown session as such', async () => {
    const batcher = ticketBatcher();
    const jti = randomUUID();
    const unknown = randomUUID();
    const [a, b, c] = await Promise.all([
      batcher.submit({ jti, sessionId, expiresAt: expiresAt() }),
      batcher.submit({ jti, sessionId, expiresAt: expiresAt() }),
      batcher.submit({ jti: randomUUID(), sessionId: unknown, expiresAt: expiresAt() }),
    ]);
    expect([a!.won, b!.won]).toEqual([true, false]);
    expect(c).toEqual({ won: true, session: undefined });
    expect((await batcher.submit({ jti, sessionId, expiresAt: expiresAt() })).won).toBe(false);
  });

  it('fails every presentation of a batch whose statement fails, and recovers for the next', async () => {
    const batcher = ticketBatcher();
    const outcomes = await Promise.allSettled([
      batcher.submit({ jti: randomUUID(), sessionId, expiresAt: new Date(Number.NaN) }),
      batcher.submit({ jti: randomUUID(), sessionId, expiresAt: expiresAt() }),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
    expect((await batcher.submit({ jti: randomUUID(), sessionId, expiresAt: expiresAt() })).won).toBe(true);
  });

  it('gives 1 000 tickets presented 8 times each across two processes exactly 1 000 winners', async () => {
    const minted = await Promise.all(Array.from({ length: 1000 }, () => mintTicket({ sessionId, key: SECRET, ttlSeconds: 120 })));
    const file = join(dir, 'tickets.json');
    await writeFile(file, JSON.stringify(minted.map((m) => m.ticket)));
    const replicas = [presenter(file, 4), presenter(file, 4, 'reverse')];
    await Promise.all(replicas.map((r) => r.ready));
    const results = replicas.map((r) => r.result());
    for (const r of replicas) r.child.stdin.write('go\n');
    const [one, two] = await Promise.all(results);
    const winners = [...one!.won, ...two!.won];
    expect(winners).toHaveLength(1000);
    expect(new Set(winners).size).toBe(1000);
    expect(one!.used + two!.used).toBe(7000);
    expect(one!.failed + two!.failed).toBe(0);
    // Both processes won some: the race really ran across processes.
    expect(Math.min(one!.won.length, two!.won.length)).toBeGreaterThan(0);
  }, 120_000);
});

describe('live-console registry with group commit', () => {
  const console_ = (viewOnly = false) => ({ id: randomUUID(), replicaId: 'r1', viewOnly, ttlMs: 30_000 });
  const rowsOf = async (session: string) =>
    (await db.selectFrom('console_live').select(['id', 'exclusive']).where('session_id', '=', session).execute()).length;

  it('registers the consoles of a burst of connects in their consume statement, and removes them in one', async () => {
    const session = await newSession();
    const batcher = ticketBatcher();
    const removing = new GroupCommit((ids: readonly string[]) => unregisterConsoles(db, ids), 50);
    const presentations = Array.from({ length: 50 }, () => ({ jti: randomUUID(), sessionId: session, expiresAt: expiresAt(), console: console_() }));
    const before = { tickets: statements, registry: registryStatements };
    const answers = await Promise.all(presentations.map((p) => batcher.submit(p)));
    expect(answers.map((a) => [a.won, a.registration])).toEqual(presentations.map(() => [true, 'added']));
    // One statement consumed the tickets and registered the consoles.
    expect(statements - before.tickets).toBe(1);
    expect(await rowsOf(session)).toBe(50);
    const beforeRemoval = registryStatements;
    // Ends that arrive within the linger share one statement, even when they do not share a turn.
    await Promise.all(presentations.map(async (p, i) => (await new Promise((r) => setTimeout(r, i % 3)), removing.submit(p.console.id))));
    expect(registryStatements - beforeRemoval).toBe(1);
    expect(await rowsOf(session)).toBe(0);
  });

  it('answers each console of a mixed batch: in exclusive use, view-only beside it, unknown session, ticket lost', async () => {
    const held = await newSession();
    const free = await newSession();
    await registerExclusiveConsole(db, { id: randomUUID(), sessionId: held, replicaId: 'r1', viewOnly: false, exclusive: true, ttlMs: 30_000 });
    const used = randomUUID();
    await consumeTickets(db, [{ jti: used, sessionId: free, expiresAt: expiresAt() }]);
    const answers = await consumeTickets(db, [
      { jti: randomUUID(), sessionId: held, expiresAt: expiresAt(), console: console_() },
      { jti: randomUUID(), sessionId: held, expiresAt: expiresAt(), console: console_(true) },
      { jti: randomUUID(), sessionId: free, expiresAt: expiresAt(), console: console_() },
      { jti: randomUUID(), sessionId: randomUUID(), expiresAt: expiresAt(), console: console_() },
      { jti: used, sessionId: free, expiresAt: expiresAt(), console: console_() },
    ]);
    expect(answers.map((a) => [a.won, a.registration])).toEqual([
      [true, 'exclusive-held'],
      [true, 'added'],
      [true, 'added'],
      [true, 'no-session'],
      [false, undefined],
    ]);
    expect(await rowsOf(held)).toBe(2);
    expect(await rowsOf(free)).toBe(1);
  });
});

describe('the live registry answering a claim', () => {
  it('refuses with the documented codes, tells a pending console it was taken over or kicked, and lets a console go once', async () => {
    const events = new SessionEvents();
    const consoles = new Consoles(events, { idleTimeoutMs: 0, maxDurationMs: 0, heartbeatMs: 30_000 });
    const registry = new LiveRegistry(db, events, consoles, createLogger('silent'));
    try {
      const session = await newSession();
      const ended: string[] = [];
      /** What the connect path does: begin, consume (which registers), then claim once the VM answered. */
      const connect = async (consoleId: string, sessionId: string, o: { viewOnly?: boolean; exclusive?: boolean } = {}) => {
        const pending = registry.begin({ consoleId, sessionId, viewOnly: o.viewOnly ?? false, exclusive: o.exclusive ?? false, onEnd: (code) => ended.push(`${consoleId} ${code}`) });
        try {
          const [answer] = await consumeTickets(db, [{ jti: randomUUID(), sessionId, expiresAt: expiresAt(), console: pending.row }]);
          if (answer!.session === undefined) throw Object.assign(new Error('unknown'), { code: 'SESSION_NOT_FOUND' });
          pending.registered(answer!.registration);
          return { pending, claim: await pending.claim() };
        } catch (error) {
          await pending.cancel();
          throw error;
        }
      };
      const rows = async () => (await db.selectFrom('console_live').select('id').where('session_id', '=', session).orderBy('id').execute()).map((r) => r.id);

      // A session that is gone (deleted between the ticket and the registration): 4404, not a database error.
      await expect(connect('c0', randomUUID())).rejects.toMatchObject({ code: 'SESSION_NOT_FOUND' });

      const earlier = await connect('c0a', session);
      const exclusive = await connect('c1', session, { exclusive: true });
      // The exclusive console's notice takes over the interactive console not live yet, not itself.
      events.emit('control', 'takeover', session, 'c1');
      expect(ended).toEqual(['c0a CONSOLE_TAKEN_OVER']);
      await earlier.claim.release();
      await expect(connect('c2', session)).rejects.toMatchObject({ code: 'CONSOLE_IN_EXCLUSIVE_USE', message: 'the console is in exclusive use' });
      const viewer = await connect('c3', session, { viewOnly: true });
      // A takeover leaves a view-only console alone.
      events.emit('control', 'takeover', session, 'c1');
      expect(ended).toEqual(['c0a CONSOLE_TAKEN_OVER']);
      expect(await rows()).toEqual(['c1', 'c3']);

      // A kick reaches consoles that are registered but not live yet, once each.
      events.emit('control', 'kick', session, undefined);
      events.emit('control', 'kick', session, undefined);
      expect(ended).toEqual(['c0a CONSOLE_TAKEN_OVER', 'c1 CONSOLE_KICKED', 'c3 CONSOLE_KICKED']);

      await exclusive.claim.release();
      await exclusive.claim.release();
      await viewer.claim.release();
      expect(await rows()).toEqual([]);
      // Every console was let go: stop() does not wait out its grace period.
      const started = Date.now();
      await registry.stop(5_000);
      expect(Date.now() - started).toBeLessThan(1_000);
    } finally {
      consoles.stop();
      await registry.stop(0);
    }
  });
});
