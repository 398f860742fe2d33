// The embedded database on its worker thread: answers, errors that carry their SQLSTATE but never
// the query's parameters, notifications, and a closed thread that fails calls instead of hanging.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initdbInChild } from '../src/db/pglite-initdb.js';
import { PGliteThread } from '../src/db/pglite-thread.js';

let dir: string;
let thread: PGliteThread;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cg-pglite-thread-'));
  await initdbInChild(dir);
  thread = await PGliteThread.start(dir, ['-c', 'shared_buffers=2MB']);
}, 60_000);
afterAll(async () => {
  await thread?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('PGlite on a worker thread', () => {
  it('answers rows with their types and the affected row count', async () => {
    await thread.query('create table t (id int primary key, at timestamptz)');
    const inserted = await thread.query('insert into t values ($1, $2), ($3, $2)', [1, new Date('2026-01-02T03:04:05Z'), 2]);
    expect(inserted.affectedRows).toBe(2);
    const { rows } = await thread.query<{ id: number; at: Date }>('select id, at from t order by id');
    expect(rows).toEqual([
      { id: 1, at: new Date('2026-01-02T03:04:05Z') },
      { id: 2, at: new Date('2026-01-02T03:04:05Z') },
    ]);
  });

  it('fails a statement with its SQLSTATE and without the parameters it was given', async () => {
    const error = await thread.query('insert into t values ($1, $2)', [1, new Date()]).catch((e: unknown) => e as Error & Record<string, unknown>);
    expect(error).toBeInstanceOf(Error);
    expect(error.code).toBe('23505');
    expect(error.message).toMatch(/duplicate key/);
    expect(error.params).toBeUndefined();
    expect(error.query).toBeUndefined();
    // The thread goes on answering.
    expect((await thread.query<{ n: number }>('select count(*)::int as n from t')).rows).toEqual([{ n: 2 }]);
  });

  it('delivers notifications to the main thread', async () => {
    const payloads: string[] = [];
    await thread.listen('cg_test', (payload) => payloads.push(payload));
    await thread.query(`select pg_notify('cg_test', 'hello')`);
    await expect.poll(() => payloads).toEqual(['hello']);
  });

  it('fails to start, rather than hanging, with settings the database rejects', async () => {
    await expect(PGliteThread.start(dir + '-unused', ['-c', 'shared_buffers=lots'])).rejects.toThrow();
    await rm(dir + '-unused', { recursive: true, force: true });
  }, 60_000);

  it('fails calls once closed instead of leaving them waiting', async () => {
    await thread.close();
    expect(thread.closed).toBe(true);
    await expect(thread.query('select 1')).rejects.toThrow(/embedded database thread stopped/);
  });
});
