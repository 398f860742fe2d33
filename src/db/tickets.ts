// The authority for one-time tickets: the first insert of a jti wins, atomically, on every replica
// that shares the database (a primary-key conflict is the arbiter, not a read-then-write).
import type { Kysely } from 'kysely';
import type { Database } from './schema.js';

/** True when this call consumed the ticket; false when any process consumed it before. */
export async function consumeTicket(db: Kysely<Database>, jti: string, sessionId: string, expiresAt: Date): Promise<boolean> {
  const row = await db
    .insertInto('consumed_tickets')
    .values({ jti, session_id: sessionId, expires_at: expiresAt })
    .onConflict((oc) => oc.column('jti').doNothing())
    .returning('jti')
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * Forgets consumed tickets that expired more than `graceSeconds` ago: an expired ticket is refused
 * by its `exp` before the table is consulted, so its row no longer guards anything.
 */
export async function purgeConsumedTickets(db: Kysely<Database>, graceSeconds = 600): Promise<number> {
  const result = await db
    .deleteFrom('consumed_tickets')
    .where('expires_at', '<', new Date(Date.now() - graceSeconds * 1000))
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
