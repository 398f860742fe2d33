// One throwaway PostgreSQL 15 cluster for the whole test run (vitest `globalSetup`). It listens on
// a unix socket in a private directory only — no TCP port, so nothing to race for — with
// durability off, since the data lives for one run. Tests get the admin URL with
// `inject('pgAdminUrl')` and make their own databases through test/helpers/postgres.ts.
//
// A missing PostgreSQL fails the run here, loudly: the suite does not silently skip its
// multi-replica tests.
import { execFile, type ExecFileOptions } from 'node:child_process';
import { appendFile, chown, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** `postgresql://postgres@localhost/postgres?host=<socket dir>`: the cluster's superuser. */
    pgAdminUrl: string;
  }
}

const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
const run = promisify(execFile);

interface Cluster {
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts a cluster in fresh temp dirs. As root (CI), initdb refuses to run, so the server runs as
 * the `postgres` system user that Debian's postgresql-15 package creates, and owns the dirs.
 */
export async function startCluster(): Promise<Cluster> {
  const asRoot = process.getuid?.() === 0;
  const dataDir = await mkdtemp(join(tmpdir(), 'cg-pgdata-'));
  const sockDir = await mkdtemp(join(tmpdir(), 'cg-pgsock-'));
  let owner: { uid: number; gid: number } | undefined;
  if (asRoot) {
    owner = await systemUser('postgres');
    await chown(dataDir, owner.uid, owner.gid);
    await chown(sockDir, owner.uid, owner.gid);
  }
  // Runs a PostgreSQL binary as the cluster's owner; cwd in the data dir so `postgres` can read it.
  const pg = (binary: string, args: string[], options: ExecFileOptions = {}) => {
    const file = join(PG_BIN, binary);
    const [command, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
    return run(command, argv, { cwd: dataDir, timeout: 60_000, ...options });
  };
  const removeDirs = () => Promise.all([rm(dataDir, { recursive: true, force: true }), rm(sockDir, { recursive: true, force: true })]);
  const logFile = join(dataDir, 'server.log');
  try {
    await pg('initdb', ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions']).catch(
      (error: unknown) => {
        throw explain('initdb', error);
      },
    );
    // Settings go in the config file rather than `pg_ctl -o "-c …"`: pg_ctl hands -o to a shell, and
    // listen_addresses='' would need quoting through two layers. appendFile keeps the file's owner.
    await appendFile(
      join(dataDir, 'postgresql.conf'),
      [
        '',
        '# console-gateway test cluster',
        "listen_addresses = ''",
        `unix_socket_directories = '${sockDir}'`,
        'max_connections = 200',
        'shared_buffers = 64MB',
        'fsync = off',
        'synchronous_commit = off',
        'full_page_writes = off',
        'wal_level = minimal',
        'max_wal_senders = 0',
        'autovacuum = off',
        "log_min_messages = 'warning'",
        '',
      ].join('\n'),
    );
    await pg('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', logFile]).catch(async (error: unknown) => {
      const log = await readFile(logFile, 'utf8').catch(() => '');
      throw explain('pg_ctl start', error, log);
    });
  } catch (error) {
    await removeDirs();
    throw error;
  }
  return {
    url: `postgresql://postgres@localhost/postgres?host=${encodeURIComponent(sockDir)}`,
    async stop() {
      // Immediate: the data is thrown away, so skip the shutdown checkpoint.
      await pg('pg_ctl', ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '30']).catch(() => {});
      await removeDirs();
    },
  };
}

async function systemUser(name: string): Promise<{ uid: number; gid: number }> {
  const passwd = await readFile('/etc/passwd', 'utf8');
  const entry = passwd.split('\n').find((line) => line.startsWith(`${name}:`));
  if (entry === undefined) {
    throw new Error(`PostgreSQL test cluster: no '${name}' system user (is Debian's postgresql-15 installed? run .ci/run)`);
  }
  const [, , uid, gid] = entry.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

function explain(step: string, error: unknown, log = ''): Error {
  const e = error as NodeJS.ErrnoException & { stderr?: string };
  const hint =
    e.code === 'ENOENT' ? ` (${PG_BIN} not found: install Debian's postgresql-15, as .ci/run does)` : '';
  const detail = [e.stderr?.trim(), log.trim()].filter(Boolean).join('\n');
  return new Error(`PostgreSQL test cluster: ${step} failed${hint}: ${e.message}${detail ? `\n${detail}` : ''}`, { cause: error });
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  const cluster = await startCluster();
  if (process.env.CG_TEST_VERBOSE) console.log(`PostgreSQL test cluster up in ${Date.now() - started} ms`);
  project.provide('pgAdminUrl', cluster.url);
  return () => cluster.stop();
}
