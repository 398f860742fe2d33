// The port pool for platforms that still give each VM console its own websockify port on a host.
// An allocation is a lease (PORT_LEASE_SECONDS): allocating again for the same session renews it,
// and a lease that expired, or whose session ended, is reclaimed by the next allocation (and by the
// reconciler). A transaction-scoped advisory lock serialises allocators across every process that
// shares the database, so two VMs starting at once never get the same port and the cap holds
// exactly; the table's primary key on `port` is the last line of defence against a duplicate.
import { sql, type Kysely, type Transaction } from 'kysely';
import { GatewayError } from '../errors.js';
import { recordAudit } from './audit.js';
import type { Database } from './schema.js';

export interface PortRange {
  start: number;
  end: number;
  maxSessions: number;
}

export interface PoolOptions extends PortRange {
  leaseSeconds: number;
}

export interface AllocateOptions extends PoolOptions {
  /** False when something else on this host holds the port (PORT_BIND_CHECK); it is skipped and recorded. */
  isFree?: (port: number) => Promise<boolean>;
  /** The host the bind check ran on, for the conflict record. */
  host?: string;
  /** Named in the audit rows of reclaimed leases. */
  actor: string;
}

export interface Lease {
  port: number;
  leaseExpiresAt: Date;
  /** True when the session already held the port and its lease was extended. */
  renewed: boolean;
}

export interface PoolStats {
  total: number;
  allocated: number;
  free: number;
  utilizationPercent: number;
  health: 'healthy' | 'warning' | 'critical';
}

export interface Allocation {
  port: number;
  sessionId: string;
  status: string;
  leaseExpiresAt: string;
  allocatedAt: string;
}

export interface PortConflict {
  port: number;
  host: string;
  detectedAt: string;
}

const POOL_LOCK = 0x636f6e73; // "cons": any constant shared by every replica
/** Candidate ports bind-checked per round trip when PORT_BIND_CHECK is on. */
const BIND_CHECK_BATCH = 32;
/** Conflicts older than this are no longer shown: the other program may have let the port go. */
const CONFLICT_SHOWN_SECONDS = 3600;

export const poolSize = (range: PortRange): number => Math.max(0, Math.min(range.maxSessions, range.end - range.start + 1));

const leaseEnd = (seconds: number) => sql<Date>`now() + ${seconds} * interval '1 second'`;

/**
 * Allocations of one process queue here, one at a time: they serialise on the advisory lock
 * anyway, and a burst (a thousand VMs starting) must not take every pooled connection while it
 * waits for that lock, starving console connects of the database. Keyed by the database handle.
 */
const queues = new WeakMap<Kysely<Database>, Promise<unknown>>();

function inTurn<T>(db: Kysely<Database>, work: () => Promise<T>): Promise<T> {
  const previous = queues.get(db) ?? Promise.resolve();
  const turn = previous.then(work, work);
  queues.set(db, turn.catch(() => {}));
  return turn;
}

/**
 * Leases a port to the session, or renews the lease it holds. Throws SESSION_NOT_FOUND,
 * SESSION_ENDED, or PORTS_EXHAUSTED when every port of the pool is leased (or held elsewhere).
 * Few round trips while the lock is held: the lock is the pool's throughput.
 */
export async function allocatePort(db: Kysely<Database>, sessionId: string, options: AllocateOptions): Promise<Lease> {
  return inTurn(db, () =>
    db.transaction().execute(async (tx) => {
      // Its own statement: a statement's snapshot is taken when it starts, so only the statements
      // after the lock see what the previous holder committed.
      await sql`select pg_advisory_xact_lock(${POOL_LOCK})`.execute(tx);
      const { rows } = await sql<{ status: string | null; port: number | null; lease_expires_at: Date | null }>`
        with session as (select status from console_sessions where id = ${sessionId}::uuid),
        renewed as (
          update console_ports set lease_expires_at = ${leaseEnd(options.leaseSeconds)}
          where session_id = ${sessionId}::uuid and exists (select 1 from session where status not in ('stopped', 'failed'))
          returning port, lease_expires_at)
        select session.status, renewed.port, renewed.lease_expires_at
        from (select 1) as one left join session on true left join renewed on true`.execute(tx);
      const { status, port, lease_expires_at: expires } = rows[0]!;
      if (status === null) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
      if (status === 'stopped' || status === 'failed') throw new GatewayError('SESSION_ENDED', `session is ${status}; it cannot hold a port`);
      if (port !== null) return { port, leaseExpiresAt: new Date(expires!), renewed: true };

      // Ended sessions' leases are released by their cleanup; looking for ones it has not reached
      // yet costs a scan of the pool, so only when the pool would otherwise be full.
      let leased = await reclaimStale(tx, options.actor, false);
      if (leased >= poolSize(options)) leased = await reclaimStale(tx, options.actor, true);
      if (leased >= poolSize(options)) {
        throw new GatewayError('PORTS_EXHAUSTED', `no free console port: all ${poolSize(options)} ports of the pool are leased`);
      }
      const lease = options.isFree === undefined ? await takeFirstFree(tx, sessionId, options) : await takeFirstBindable(tx, sessionId, options);
      return { ...lease, renewed: false };
    }),
  );
}

/**
 * Deletes leases that expired (and, with `ended`, those whose session ended), recording each in the
 * audit; returns the number of leases still held. The count runs on the statement's snapshot, from
 * before the delete.
 */
async function reclaimStale(tx: Transaction<Database>, actor: string, ended: boolean): Promise<number> {
  const { rows } = await sql<{ held: string; reclaimed: { port: number; session_id: string; expired: boolean }[] | null }>`
    with reclaimed as (
      delete from console_ports p
      where p.lease_expires_at < now()
         or (${ended} and exists (select 1 from console_sessions s where s.id = p.session_id and s.status in ('stopped', 'failed')))
      returning p.port, p.session_id, p.lease_expires_at < now() as expired)
    select (select count(*) from console_ports) - (select count(*) from reclaimed) as held,
           (select json_agg(reclaimed) from reclaimed) as reclaimed`.execute(tx);
  const reclaimed = rows[0]!.reclaimed ?? [];
  await recordAudit(
    tx,
    actor,
    reclaimed.map((r) => ({
      sessionId: r.session_id,
      action: 'release_port',
      reason: `port ${r.port} reclaimed: ${r.expired ? 'its lease expired' : 'its session ended'}`,
    })),
  );
  return Number(rows[0]!.held);
}

async function takeFirstFree(tx: Transaction<Database>, sessionId: string, options: AllocateOptions): Promise<Omit<Lease, 'renewed'>> {
  const { rows } = await sql<{ port: number; lease_expires_at: Date }>`
    with leased as (
      insert into console_ports (port, session_id, lease_expires_at)
      select p, ${sessionId}::uuid, ${leaseEnd(options.leaseSeconds)}
      from generate_series(${options.start}::int, ${options.end}::int) as p
      where not exists (select 1 from console_ports where port = p)
      order by p limit 1
      returning port, lease_expires_at),
    noted as (update console_sessions set last_port = (select port from leased) where id = ${sessionId}::uuid and exists (select 1 from leased))
    select * from leased`.execute(tx);
  if (rows[0] === undefined) throw new GatewayError('PORTS_EXHAUSTED', `no free console port in ${options.start}-${options.end}`);
  return { port: rows[0].port, leaseExpiresAt: new Date(rows[0].lease_expires_at) };
}

/** Like takeFirstFree, skipping (and recording) ports something else on this host already holds. */
async function takeFirstBindable(tx: Transaction<Database>, sessionId: string, options: AllocateOptions): Promise<Omit<Lease, 'renewed'>> {
  const busy: number[] = [];
  for (;;) {
    const { rows } = await sql<{ port: number }>`
      select p as port from generate_series(${options.start}::int, ${options.end}::int) as p
      where not exists (select 1 from console_ports where port = p) and p <> all(${busy}::int[])
      order by p limit ${BIND_CHECK_BATCH}`.execute(tx);
    if (rows.length === 0) {
      throw new GatewayError('PORTS_EXHAUSTED', `no free console port in ${options.start}-${options.end}: ${busy.length} unleased ports are held by other programs on this host`);
    }
    for (const { port } of rows) {
      if (!(await options.isFree!(port))) {
        busy.push(port);
        await sql`
          insert into console_port_conflicts (port, host) values (${port}, ${options.host ?? 'unknown'})
          on conflict (port, host) do update set detected_at = now()`.execute(tx);
        continue;
      }
      const leased = await tx
        .insertInto('console_ports')
        .values({ port, session_id: sessionId, lease_expires_at: leaseEnd(options.leaseSeconds) })
        .returning(['port', 'lease_expires_at'])
        .executeTakeFirstOrThrow();
      await tx.updateTable('console_sessions').set({ last_port: port }).where('id', '=', sessionId).execute();
      return { port: leased.port, leaseExpiresAt: new Date(leased.lease_expires_at) };
    }
  }
}

/** Releases the session's port; true when it held one. */
export async function releasePort(db: Kysely<Database>, sessionId: string): Promise<boolean> {
  const result = await db.deleteFrom('console_ports').where('session_id', '=', sessionId).executeTakeFirst();
  return Number(result.numDeletedRows) > 0;
}

export async function portOf(db: Kysely<Database>, sessionId: string): Promise<number | undefined> {
  return (await db.selectFrom('console_ports').select('port').where('session_id', '=', sessionId).executeTakeFirst())?.port;
}

/** Pool use: a lease counts while it is unexpired and its session has not ended. */
export async function poolStats(db: Kysely<Database>, range: PortRange): Promise<PoolStats> {
  const { rows } = await sql<{ count: string }>`
    select count(*) as count from console_ports p join console_sessions s on s.id = p.session_id
    where p.lease_expires_at >= now() and s.status not in ('stopped', 'failed')`.execute(db);
  const total = poolSize(range);
  const allocated = Number(rows[0]!.count);
  const utilizationPercent = total === 0 ? 100 : Math.round((allocated / total) * 1000) / 10;
  const health = utilizationPercent >= 95 ? 'critical' : utilizationPercent >= 80 ? 'warning' : 'healthy';
  return { total, allocated, free: Math.max(0, total - allocated), utilizationPercent, health };
}

export async function listAllocations(db: Kysely<Database>): Promise<Allocation[]> {
  const rows = await db
    .selectFrom('console_ports as p')
    .innerJoin('console_sessions as s', 's.id', 'p.session_id')
    .select(['p.port', 'p.session_id', 's.status', 'p.lease_expires_at', 'p.allocated_at'])
    .orderBy('p.port')
    .execute();
  return rows.map((r) => ({
    port: r.port,
    sessionId: r.session_id,
    status: r.status,
    leaseExpiresAt: new Date(r.lease_expires_at).toISOString(),
    allocatedAt: new Date(r.allocated_at).toISOString(),
  }));
}

export async function listConflicts(db: Kysely<Database>): Promise<PortConflict[]> {
  const rows = await db
    .selectFrom('console_port_conflicts')
    .selectAll()
    .where('detected_at', '>', sql<Date>`now() - ${CONFLICT_SHOWN_SECONDS} * interval '1 second'`)
    .orderBy('port')
    .execute();
  return rows.map((r) => ({ port: r.port, host: r.host, detectedAt: new Date(r.detected_at).toISOString() }));
}
