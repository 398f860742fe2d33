// The authority for one-time tickets: the first insert of a jti wins, atomically, on every replica
// that shares the database (a primary-key conflict is the arbiter, not a read-then-write).
import { sql, type Kysely } from 'kysely';
import type { Database, SessionRow } from './schema.js';

/**
 * Consumes the ticket and reads its session in one round trip (the connect path's hot spot).
 * `won` is true when this call consumed the ticket, false when any process consumed it before;
 * `session` is the row as it is now, or undefined for an unknown session.
 */
export async function consumeTicket(
  db: Kysely<Database>,
  jti: string,
  sessionId: string,
  expiresAt: Date,
): Promise<{ won: boolean; session: SessionRow | undefined }> {
  const { rows } = await sql<SessionRow & { won: boolean }>`
    with consumed as (
      insert into consumed_tickets (jti, session_id, expires_at)
      values (${jti}, ${sessionId}::uuid, ${expiresAt})
      on conflict (jti) do nothing
      returning jti
    )
    select exists (select 1 from consumed) as won, s.*
    from (select 1) as one left join console_sessions s on s.id = ${sessionId}::uuid`.execute(db);
  const { won, ...session } = rows[0]!;
  return { won, session: session.id === null ? undefined : (session as SessionRow) };
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
