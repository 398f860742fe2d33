// A fresh database per test (or per file) in the run's one PostgreSQL cluster, started by
// test/helpers/global-setup.ts. Databases are cheap to create from template1 and isolate tests that
// run in parallel workers.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
// For the `pgAdminUrl` key's type (the ProvidedContext augmentation); erased at run time.
import type {} from './global-setup.js';

export interface TestDatabase {
  /** `postgresql://postgres@localhost/<name>?host=<socket dir>`, usable by pg as DATABASE_URL. */
  url: string;
  /** Drops the database, closing any connection still open to it. */
  drop(): Promise<void>;
}

/** The cluster's superuser URL (database `postgres`). Throws outside a vitest run with the global setup. */
export function adminUrl(): string {
  const url = inject('pgAdminUrl');
  if (!url) throw new Error('pgAdminUrl was not provided: run the tests through vitest.config.ts (its globalSetup starts PostgreSQL)');
  return url;
}

/** Creates a uniquely named, empty database and returns its URL. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const admin = adminUrl();
  const name = `cg_test_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await withAdmin(admin, (client) => client.query(`CREATE DATABASE "${name}"`));
  const url = new URL(admin);
  url.pathname = `/${name}`;
  let dropped = false;
  return {
    url: url.toString(),
    async drop() {
      if (dropped) return;
      dropped = true;
      // FORCE (PostgreSQL 13+): a pool the test forgot to close must not fail the teardown.
      await withAdmin(admin, (client) => client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
    },
  };
}

async function withAdmin<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}
