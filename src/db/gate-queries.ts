// The readiness gate's queries: a lease in the session row (probe_owner, probe_lease_until) so that
// several gate processes never probe one session at once, and transitions conditioned on the lease
// and on status = 'provisioning' so that a session is moved on exactly once.
//
// The deadline is the row's provisioning_since (set by the trigger when the target is committed)
// plus the timeout, so a restarted gate or another gate taking over never extends it.
import { sql, type Kysely } from 'kysely';
import type { Database, SessionRow } from './schema.js';

export interface ProbeState {
  deadline: string;
  target: string;
  attempts?: number;
  lastReason?: string;
}

export interface Claim {
  row: SessionRow;
  /** When the gate must give up, on the database's clock. */
  deadline: Date;
  /** The database's clock at claim time, to translate the deadline to ours. */
  dbNow: Date;
}

const ms = (n: number) => sql<Date>`now() + ${Math.round(n)} * interval '1 millisecond'`;

export const targetKey = (row: Pick<SessionRow, 'target_host' | 'target_port' | 'target_path' | 'target_socket'>): string =>
  row.target_socket !== null ? `unix:${row.target_socket}` : `${row.target_host}:${row.target_port}${row.target_path ?? ''}`;

/**
 * Claims up to `limit` provisioning sessions whose lease is free or expired, for `owner`, with a
 * lease of `leaseMs`. Rows locked by another claimer are skipped, not waited for.
 */
export async function claimProvisioning(db: Kysely<Database>, owner: string, leaseMs: number, timeoutMs: number, limit: number): Promise<Claim[]> {
  if (limit <= 0) return [];
  return db.transaction().execute(async (tx) => {
    const { rows } = await sql<SessionRow & { db_now: Date }>`
      select *, now() as db_now from console_sessions
      where status = 'provisioning'
        and ((target_host is not null and target_port is not null) or target_socket is not null)
        and (probe_lease_until is null or probe_lease_until < now())
      order by updated_at
      limit ${limit}
      for update skip locked`.execute(tx);
    const claims: Claim[] = [];
    for (const found of rows) {
      const { db_now: dbNowRaw, ...row } = found;
      const since = row.provisioning_since ?? row.updated_at;
      const deadline = new Date(new Date(since).getTime() + timeoutMs);
      const updated = await tx
        .updateTable('console_sessions')
        .set({ probe_owner: owner, probe_lease_until: ms(leaseMs) })
        .where('id', '=', row.id)
        .returningAll()
        .executeTakeFirstOrThrow();
      claims.push({ row: updated, deadline, dbNow: new Date(dbNowRaw) });
    }
    return claims;
  });
}

/**
 * Extends `owner`'s lease and records progress; undefined when the lease is lost or the session
 * left `provisioning` (someone else decided: stop probing).
 */
export async function renewLease(db: Kysely<Database>, id: string, owner: string, leaseMs: number, state: ProbeState): Promise<SessionRow | undefined> {
  return db
    .updateTable('console_sessions')
    .set({ probe_lease_until: ms(leaseMs), diagnostics: JSON.stringify({ probe: state }) })
    .where('id', '=', id)
    .where('probe_owner', '=', owner)
    .where('status', '=', 'provisioning')
    .returningAll()
    .executeTakeFirst();
}

/** Gives `owner`'s leases back so another gate takes over at once (the deadline stays in the row). */
export async function releaseLeases(db: Kysely<Database>, owner: string, ids: readonly string[]): Promise<void> {
  if (ids.length === 0) return;
  await db
    .updateTable('console_sessions')
    .set({ probe_lease_until: null })
    .where('id', 'in', ids)
    .where('probe_owner', '=', owner)
    .where('status', '=', 'provisioning')
    .execute();
}

/**
 * Provisioning → failed, only while `owner` holds the lease (a session a backend has meanwhile
 * marked ready or stopped is left alone), releasing its port in the same transaction.
 */
export async function failProvisioning(
  db: Kysely<Database>,
  id: string,
  owner: string,
  reason: string,
  diagnostics: unknown,
): Promise<{ row: SessionRow; releasedPort: number | undefined } | undefined> {
  return db.transaction().execute(async (tx) => {
    const row = await tx
      .updateTable('console_sessions')
      .set({ status: 'failed', failure_reason: reason, diagnostics: JSON.stringify(diagnostics ?? null), probe_owner: null, probe_lease_until: null })
      .where('id', '=', id)
      .where('status', '=', 'provisioning')
      .where('probe_owner', '=', owner)
      .returningAll()
      .executeTakeFirst();
    if (row === undefined) return undefined;
    const released = await tx.deleteFrom('console_ports').where('session_id', '=', id).returning('port').executeTakeFirst();
    return { row, releasedPort: released?.port };
  });
}
