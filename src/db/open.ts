// Opens the store: PostgreSQL through pg when DATABASE_URL is set, otherwise the embedded PGlite
// under DATA_DIR. Both run the same kysely queries and the same migrations; the only difference is
// how a connection is made and how notifications arrive.
import { mkdir, open as openFile, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import type { Logger } from 'pino';
import { PGliteDialect } from './pglite-dialect.js';
import { PGliteThread } from './pglite-thread.js';
import { initdbInChild, isInitialised } from './pglite-initdb.js';
import { SessionEvents } from './events.js';
import { CONTROL_CHANNEL, SESSION_CHANNEL, type Database } from './schema.js';

export interface Store {
  readonly db: Kysely<Database>;
  readonly kind: 'postgres' | 'embedded';
  /** Session changes; empty unless opened with `listen: true`. */
  readonly events: SessionEvents;
  /** Resolves when the database answers a trivial query. */
  ping(): Promise<void>;
  /** True while the LISTEN connection is up, false while it is re-established; undefined without one (no `listen`, embedded). */
  listenUp(): boolean | undefined;
  /** The connection pool's counts (PostgreSQL only). */
  poolStats(): PoolStats | undefined;
  close(): Promise<void>;
}

export interface PoolStats {
  total: number;
  idle: number;
  /** Queries queued for a free connection. */
  waiting: number;
}

export interface StoreOptions {
  databaseUrl: string | undefined;
  dataDir: string;
  log: Logger;
  /** Subscribe to session changes (servers do; one-shot CLI commands need not). */
  listen?: boolean;
}

// pg waits forever by default; every wait here is bounded.
const CONNECT_TIMEOUT_MS = 5_000;
const STATEMENT_TIMEOUT_MS = 10_000;
const QUERY_TIMEOUT_MS = 15_000;
const LISTEN_BACKOFF_MIN_MS = 250;
const LISTEN_BACKOFF_MAX_MS = 10_000;
const LISTEN_HEALTH_INTERVAL_MS = 15_000;

// The embedded database holds a few small tables; PostgreSQL's default 128 MB of shared buffers
// would only make the process bigger (the OS page cache keeps the files warm anyway).
const EMBEDDED_SETTINGS = ['-c', 'shared_buffers=2MB', '-c', 'temp_buffers=1MB', '-c', 'work_mem=1MB'];

/** Opens the configured database; throws a one-line error when it cannot be reached. */
export async function openStore(options: StoreOptions): Promise<Store> {
  return options.databaseUrl === undefined ? openEmbedded(options) : openPostgres(options.databaseUrl, options);
}

async function openPostgres(url: string, { log, listen = false }: StoreOptions): Promise<Store> {
  const connection = {
    connectionString: url,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    statement_timeout: STATEMENT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
    idle_in_transaction_session_timeout: STATEMENT_TIMEOUT_MS,
    application_name: 'console-gateway',
    keepAlive: true,
  };
  const pool = new pg.Pool({ ...connection, max: 10, idleTimeoutMillis: 30_000 });
  // An idle client's socket error is emitted on the pool; unhandled it would crash the process.
  pool.on('error', (error) => log.warn({ err: error }, 'database connection lost; the pool will reconnect'));
  // A checked-out client has no pool listener: a connection that dies mid-query emits 'error' on
  // the client as well as failing the query (which its caller reports), and unheard that crashes.
  pool.on('connect', (client) => client.on('error', (error) => log.debug({ err: error }, 'database connection lost during a query')));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const events = new SessionEvents();
  const store: Store = {
    db,
    kind: 'postgres',
    listenUp: () => (listen ? listening.up : undefined),
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    events,
    ping: async () => void (await sql`select 1`.execute(db)),
    close: async () => {
      stopListening.abort();
      await db.destroy();
    },
  };
  const stopListening = new AbortController();
  const listening = { up: false };
  try {
    await store.ping();
  } catch (error) {
    await db.destroy().catch(() => {});
    throw new Error(`database unreachable: ${describeDbError(error)}`, { cause: error });
  }
  if (listen) void listenForever({ connection, events, log, signal: stopListening.signal, state: listening });
  return store;
}

interface ListenOptions {
  connection: pg.ClientConfig;
  events: SessionEvents;
  log: Logger;
  signal: AbortSignal;
  /** `up` while LISTEN is in place, for /readyz and console_gateway_db_listen_up. */
  state: { up: boolean };
}

/**
 * Holds one LISTEN connection, re-established with capped exponential backoff whenever it drops;
 * each (re)connect emits 'resync' so waiters re-read state they might have missed.
 */
async function listenForever({ connection, events, log, signal, state }: ListenOptions): Promise<void> {
  let backoff = LISTEN_BACKOFF_MIN_MS;
  while (!signal.aborted) {
    const client = new pg.Client(connection);
    const ended = new Promise<unknown>((resolve) => {
      client.on('error', resolve);
      client.on('end', () => resolve(undefined));
      signal.addEventListener('abort', () => resolve(undefined), { once: true });
    });
    client.on('notification', (message) =>
      message.channel === CONTROL_CHANNEL ? events.dispatchControl(message.payload) : events.dispatch(message.payload),
    );
    let health: NodeJS.Timeout | undefined;
    try {
      await client.connect();
      await client.query(`listen ${SESSION_CHANNEL}; listen ${CONTROL_CHANNEL}`);
      backoff = LISTEN_BACKOFF_MIN_MS;
      state.up = true;
      events.emit('resync');
      // A silently dead TCP connection delivers no notifications and no error: probe it.
      health = setInterval(() => client.query('select 1').catch((error) => client.emit('error', error)), LISTEN_HEALTH_INTERVAL_MS);
      health.unref();
      const error = await ended;
      state.up = false;
      if (error !== undefined && !signal.aborted) log.warn({ err: error }, 'database LISTEN connection lost; reconnecting');
    } catch (error) {
      if (!signal.aborted) log.warn({ err: error, retryInMs: backoff }, 'database LISTEN connection failed; retrying');
    } finally {
      state.up = false;
      clearInterval(health);
      client.removeAllListeners('notification');
      await client.end().catch(() => {});
    }
    if (signal.aborted) return;
    await new Promise((r) => setTimeout(r, backoff * (0.5 + Math.random() / 2)).unref());
    backoff = Math.min(backoff * 2, LISTEN_BACKOFF_MAX_MS);
  }
}

async function openEmbedded({ dataDir, log, listen = false }: StoreOptions): Promise<Store> {
  const dir = resolve(dataDir);
  const pgDir = join(dir, 'pglite');
  await mkdir(pgDir, { recursive: true });
  const unlock = await lockDataDir(dir);
  let pglite;
  try {
    if (!(await isInitialised(pgDir))) await initdbInChild(pgDir);
    pglite = await PGliteThread.start(pgDir, EMBEDDED_SETTINGS);
  } catch (error) {
    await unlock();
    throw new Error(`embedded database under ${dir} could not be opened: ${(error as Error).message}`, { cause: error });
  }
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
  const events = new SessionEvents();
  if (listen) {
    await pglite.listen(SESSION_CHANNEL, (payload) => events.dispatch(payload));
    await pglite.listen(CONTROL_CHANNEL, (payload) => events.dispatchControl(payload));
  }
  log.debug({ dataDir: dir }, 'embedded database opened');
  return {
    db,
    kind: 'embedded',
    // PGlite's notifications come from its thread in this process: there is no LISTEN connection to lose.
    listenUp: () => undefined,
    poolStats: () => undefined,
    events,
    ping: async () => void (await sql`select 1`.execute(db)),
    close: async () => {
      await db.destroy();
      await unlock();
    },
  };
}

/**
 * PGlite is one process's database: a second process opening the same files would corrupt them.
 * A lock file with our pid refuses that with a clear message; a stale lock (dead pid) is taken over.
 */
async function lockDataDir(dir: string): Promise<() => Promise<void>> {
  const lockPath = join(dir, 'console-gateway.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await openFile(lockPath, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      return () => rm(lockPath, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const pid = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
        throw new Error(
          `the embedded database in ${dir} is in use by process ${pid}; use that gateway's control API, stop it, or set DATABASE_URL`,
        );
      }
      await rm(lockPath, { force: true });
    }
  }
  throw new Error(`could not lock the embedded database in ${dir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One line that names the problem without echoing credentials from the URL. */
export function describeDbError(error: unknown): string {
  const e = error as NodeJS.ErrnoException & { code?: string };
  if (e?.code === 'ECONNREFUSED') return 'connection refused';
  if (e?.code === 'ENOTFOUND') return 'host not found';
  if (e?.code === 'ENOENT') return 'socket not found';
  if (e?.code === '28P01' || e?.code === '28000') return 'authentication failed';
  if (e?.code === '3D000') return 'database does not exist';
  if (/timeout/i.test(e?.message ?? '')) return 'connection timed out';
  return (e?.message ?? String(error)).replace(/postgres(ql)?:\/\/\S+/g, '<database url>');
}
