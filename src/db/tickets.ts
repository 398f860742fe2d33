// The authority for one-time tickets: the first insert of a jti wins, atomically, on every replica
// that shares the database (a primary-key conflict is the arbiter, not a read-then-write).
import { sql, type Kysely } from 'kysely';
import type { Database, SessionRow } from './schema.js';

export interface Presentation {
  jti: string;
  sessionId: string;
  expiresAt: Date;
}

export interface Consumption {
  /** True when this presentation consumed the ticket; false when any process consumed it before. */
  won: boolean;
  /** The ticket's session as it is now, or undefined for an unknown session. */
  session: SessionRow | undefined;
}

const LOST: Consumption = { won: false, session: undefined };

/**
 * Consumes a batch of tickets and reads their sessions in one statement (the connect path's hot
 * spot; group-committed by the caller). Answers in `batch` order. A jti presented twice in one
 * batch is won by its first presentation only.
 */
export async function consumeTickets(db: Kysely<Database>, batch: readonly Presentation[]): Promise<Consumption[]> {
  const first = new Map<string, number>();
  batch.forEach((p, i) => first.has(p.jti) || first.set(p.jti, i));
  const unique = [...first.values()].map((i) => batch[i]!);
  const input = JSON.stringify(unique.map((p, i) => ({ i, jti: p.jti, session_id: p.sessionId, expires_at: p.expiresAt })));
  const { rows } = await sql<SessionRow & { i: number; won: boolean }>`
    with input as (
      select * from json_to_recordset(${input}::json) as t(i int, jti text, session_id uuid, expires_at timestamptz)
    ), consumed as (
      insert into consumed_tickets (jti, session_id, expires_at)
      select jti, session_id, expires_at from input
      on conflict (jti) do nothing
      returning jti
    )
    select input.i, consumed.jti is not null as won, s.*
    from input
    left join consumed on consumed.jti = input.jti
    left join console_sessions s on s.id = input.session_id`.execute(db);
  const answers = new Map<string, Consumption>();
  for (const { i, won, ...session } of rows) answers.set(unique[i]!.jti, { won, session: session.id === null ? undefined : (session as SessionRow) });
  return batch.map((p, i) => (first.get(p.jti) === i ? answers.get(p.jti)! : LOST));
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
