// The reconciler's queries. Every write is conditioned on the state that justified it, so a pass
// running beside another (or beside the API, the gate, a backend's SQL) never acts twice or on a
// session that moved on meanwhile.
import { sql, type Kysely } from 'kysely';
import type { Database, SessionRow } from './schema.js';

const ago = (seconds: number) => sql<Date>`now() - ${seconds} * interval '1 second'`;

/** Consumed tickets that expired more than `graceSeconds` ago (dry run: count only). */
export async function forgetExpiredTickets(db: Kysely<Database>, graceSeconds: number, dryRun: boolean): Promise<number> {
  if (dryRun) {
    const { count } = await db
      .selectFrom('consumed_tickets')
      .select((eb) => eb.fn.countAll<string>().as('count'))
      .where('expires_at', '<', ago(graceSeconds))
      .executeTakeFirstOrThrow();
    return Number(count);
  }
  const result = await db.deleteFrom('consumed_tickets').where('expires_at', '<', ago(graceSeconds)).executeTakeFirst();
  return Number(result.numDeletedRows);
}

/** Provisioning past the readiness timeout with no gate holding a probe lease on it. */
export async function findAbandonedProvisioning(db: Kysely<Database>, timeoutSeconds: number, limit: number): Promise<SessionRow[]> {
  return db
    .selectFrom('console_sessions')
    .selectAll()
    .where('status', '=', 'provisioning')
    .where('provisioning_since', '<', ago(timeoutSeconds))
    .where((eb) => eb.or([eb('probe_lease_until', 'is', null), eb('probe_lease_until', '<', sql<Date>`now()`)]))
    .orderBy('provisioning_since')
    .limit(limit)
    .execute();
}

/** Pending longer than the timeout: no VM address was ever committed. */
export async function findStalePending(db: Kysely<Database>, timeoutSeconds: number, limit: number): Promise<SessionRow[]> {
  return db
    .selectFrom('console_sessions')
    .selectAll()
    .where('status', '=', 'pending')
    .where('created_at', '<', ago(timeoutSeconds))
    .orderBy('created_at')
    .limit(limit)
    .execute();
}

/**
 * Fails the session if it is still in `from` (and, for provisioning, still unclaimed by a gate),
 * recording why it will be cleaned. False when it moved on meanwhile.
 */
export async function failStuck(
  db: Kysely<Database>,
  id: string,
  from: 'pending' | 'provisioning',
  failureReason: string,
  cleanupReason: string,
): Promise<boolean> {
  let query = db
    .updateTable('console_sessions')
    .set({ status: 'failed', failure_reason: failureReason, cleanup_reason: cleanupReason, probe_owner: null, probe_lease_until: null })
    .where('id', '=', id)
    .where('status', '=', from);
  if (from === 'provisioning') query = query.where((eb) => eb.or([eb('probe_lease_until', 'is', null), eb('probe_lease_until', '<', sql<Date>`now()`)]));
  return (await query.returning('id').executeTakeFirst()) !== undefined;
}

/** Leases that expired, or whose session ended (a cleanup that failed leaves them behind). */
export async function findStaleLeases(db: Kysely<Database>): Promise<{ port: number; session_id: string; expired: boolean }[]> {
  const { rows } = await sql<{ port: number; session_id: string; expired: boolean }>`
    select p.port, p.session_id, p.lease_expires_at < now() as expired
    from console_ports p join console_sessions s on s.id = p.session_id
    where p.lease_expires_at < now() or s.status in ('stopped', 'failed')
    order by p.port`.execute(db);
  return rows;
}

/** Releases the lease only if it is still stale (a renewal meanwhile keeps it). */
export async function releaseStaleLease(db: Kysely<Database>, port: number, sessionId: string): Promise<boolean> {
  const { rows } = await sql<{ port: number }>`
    delete from console_ports p
    where p.port = ${port} and p.session_id = ${sessionId}::uuid
      and (p.lease_expires_at < now() or exists (select 1 from console_sessions s where s.id = p.session_id and s.status in ('stopped', 'failed')))
    returning p.port`.execute(db);
  return rows.length > 0;
}

export async function findReady(db: Kysely<Database>, limit: number): Promise<SessionRow[]> {
  return db.selectFrom('console_sessions').selectAll().where('status', '=', 'ready').orderBy('ready_at').limit(limit).execute();
}

export type Strike = 'unreachable_probes' | 'missing_resource_passes';

/**
 * Counts one more strike against a ready session; at `threshold` it is stopped in the same
 * statement, with cleanup_reason orphaned_resource. Undefined when it is no longer ready.
 */
export async function strike(db: Kysely<Database>, id: string, counter: Strike, threshold: number): Promise<{ count: number; stopped: boolean } | undefined> {
  const column = sql.ref(counter);
  const { rows } = await sql<{ count: number; status: string }>`
    update console_sessions
    set ${column} = ${column} + 1,
        status = case when ${column} + 1 >= ${threshold} then 'stopped' else status end,
        cleanup_reason = case when ${column} + 1 >= ${threshold} then 'orphaned_resource' else cleanup_reason end
    where id = ${id}::uuid and status = 'ready'
    returning ${column} as count, status`.execute(db);
  return rows[0] === undefined ? undefined : { count: rows[0].count, stopped: rows[0].status === 'stopped' };
}

/** Clears a session's strikes (its console answered, or its resources are listed again). */
export async function clearStrikes(db: Kysely<Database>, id: string, counter: Strike): Promise<void> {
  await db.updateTable('console_sessions').set({ [counter]: 0 }).where('id', '=', id).where(counter, '>', 0).execute();
}

export async function sessionsByIds(db: Kysely<Database>, ids: readonly string[]): Promise<SessionRow[]> {
  if (ids.length === 0) return [];
  return db.selectFrom('console_sessions').selectAll().where('id', 'in', ids).execute();
}
