// A private PostgreSQL 15 for the bench (Debian's postgresql-15): a fresh cluster in the bench's
// temp dir, reachable only over a unix socket, with PostgreSQL's default durability (fsync and
// synchronous commit on), so connects/s on it are what a production database would give.
// As root, initdb refuses to run: the cluster then belongs to the `postgres` system user.
import { execFileSync } from 'node:child_process';
import { chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';

const PG_BIN = process.env.BENCH_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export async function startPostgres(work, { startProcess, sleep }) {
  const dataDir = join(work, 'pgdata');
  const sockDir = join(work, 'pgsock');
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  mkdirSync(sockDir, { recursive: true });
  const asRoot = process.getuid?.() === 0;
  const as = (argv) => (asRoot ? ['runuser', '-u', 'postgres', '--', ...argv] : argv);
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']));
    const gid = Number(execFileSync('id', ['-g', 'postgres']));
    chownSync(work, uid, gid);
    chownSync(dataDir, uid, gid);
    chownSync(sockDir, uid, gid);
  }
  const [cmd, ...args] = as([join(PG_BIN, 'initdb'), '-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-instructions']);
  execFileSync(cmd, args, { stdio: 'ignore', cwd: dataDir });
  const server = startProcess('postgres', as([join(PG_BIN, 'postgres'), '-D', dataDir, '-k', sockDir, '-h', '', '-c', 'max_connections=200', '-c', 'log_min_messages=warning']), { cwd: dataDir });
  const url = `postgresql://postgres@localhost/postgres?host=${encodeURIComponent(sockDir)}`;
  for (let i = 0; i < 300; i++) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
    try {
      await client.connect();
      await client.end();
      return { url, server };
    } catch {
      await client.end().catch(() => {});
      if (server.exited) break;
      await sleep(100);
    }
  }
  throw new Error(`PostgreSQL did not start: ${server.stderr.slice(-1000)}`);
}

/** A fresh database in the cluster, so each gateway starts on an empty schema. */
export async function createDatabase(adminUrl, name) {
  const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query(`create database "${name}"`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}
