// Cleanup of ended sessions, exactly once however they ended (API, CLI, plain SQL, the gate, the
// reconciler): a cleaner claims the session with a conditional UPDATE (a claim is free when none is
// held or it outlived its deadline, so a cleaner killed halfway is replaced), runs the teardown,
// then completes the cleanup only while it still holds the claim. Completion is recorded in the
// session row (cleanup_completed_at, cleanup_reason) and in console_audit, in one transaction.
import { sql, type Kysely } from 'kysely';
import { recordAudit } from './audit.js';
import type { Database, SessionRow } from './schema.js';

const ENDED = ['stopped', 'failed'] as const;
const until = (ms: number) => sql<Date>`now() + ${Math.round(ms)} * interval '1 millisecond'`;

/** Claims one ended, uncleaned session for `actor`; undefined when cleaned already or claimed by another. */
export async function claimCleanup(db: Kysely<Database>, id: string, actor: string, claimMs: number): Promise<SessionRow | undefined> {
  return db
    .updateTable('console_sessions')
    .set({ cleanup_claimed_by: actor, cleanup_claimed_until: until(claimMs) })
    .where('id', '=', id)
    .where('status', 'in', ENDED)
    .where('cleanup_completed_at', 'is', null)
    .where((eb) => eb.or([eb('cleanup_claimed_until', 'is', null), eb('cleanup_claimed_until', '<', sql<Date>`now()`)]))
    .returningAll()
    .executeTakeFirst();
}

/** Ended sessions no cleaner has completed or holds now, oldest first. */
export async function findUncleaned(db: Kysely<Database>, limit: number): Promise<SessionRow[]> {
  return db
    .selectFrom('console_sessions')
    .selectAll()
    .where('status', 'in', ENDED)
    .where('cleanup_completed_at', 'is', null)
    .where((eb) => eb.or([eb('cleanup_claimed_until', 'is', null), eb('cleanup_claimed_until', '<', sql<Date>`now()`)]))
    .orderBy('finished_at')
    .limit(limit)
    .execute();
}

/** The port the session holds now, or the one it last held (released since by a stop or the gate). */
export async function portForTeardown(db: Kysely<Database>, row: SessionRow): Promise<number | undefined> {
  const held = await db.selectFrom('console_ports').select('port').where('session_id', '=', row.id).executeTakeFirst();
  return held?.port ?? row.last_port ?? undefined;
}

/**
 * Releases the port and marks the cleanup complete while `actor` still holds the claim; returns
 * the row and the released port, or undefined when the claim was lost.
 */
export async function completeCleanup(
  db: Kysely<Database>,
  id: string,
  actor: string,
  reason: string,
  detail: string,
): Promise<{ row: SessionRow; releasedPort: number | undefined } | undefined> {
  return db.transaction().execute(async (tx) => {
    const row = await tx
      .updateTable('console_sessions')
      .set({
        cleanup_completed_at: sql<Date>`now()`,
        cleanup_reason: sql<string>`coalesce(cleanup_reason, ${reason})`,
        cleanup_claimed_by: null,
        cleanup_claimed_until: null,
        cleanup_error: null,
      })
      .where('id', '=', id)
      .where('cleanup_claimed_by', '=', actor)
      .where('cleanup_completed_at', 'is', null)
      .returningAll()
      .executeTakeFirst();
    if (row === undefined) return undefined;
    const released = await tx.deleteFrom('console_ports').where('session_id', '=', id).returning('port').executeTakeFirst();
    const port = released === undefined ? '' : `; port ${released.port} released`;
    await recordAudit(tx, actor, [{ sessionId: id, action: 'cleanup', reason: `${row.cleanup_reason}: ${detail}${port}` }]);
    return { row, releasedPort: released?.port };
  });
}

/** Gives the claim back after a failed teardown, so the next pass retries; counts the attempt. */
export async function abandonCleanup(db: Kysely<Database>, id: string, actor: string, error: string): Promise<void> {
  await db.transaction().execute(async (tx) => {
    await tx
      .updateTable('console_sessions')
      .set((eb) => ({ cleanup_claimed_by: null, cleanup_claimed_until: null, cleanup_error: error, cleanup_attempts: eb('cleanup_attempts', '+', 1) }))
      .where('id', '=', id)
      .where('cleanup_claimed_by', '=', actor)
      .execute();
    await recordAudit(tx, actor, [{ sessionId: id, action: 'teardown_failed', reason: `${error}; retried next pass` }]);
  });
}
