// The authority for one-time tickets: the first insert of a jti wins, atomically, on every replica
// that shares the database (a primary-key conflict is the arbiter, not a read-then-write). The same
// statement reads the ticket's session and registers the console in the live-console registry, so
// a connect costs one group-committed statement.
import { sql, type Kysely } from 'kysely';
import type { Database, SessionRow } from './schema.js';
import type { LiveRow, Registration } from './live-consoles.js';

export interface Presentation {
  jti: string;
  sessionId: string;
  expiresAt: Date;
  /** The console's registry row, added only if this presentation wins (not for exclusive consoles). */
  console?: Omit<LiveRow, 'sessionId' | 'exclusive'> | undefined;
}

export interface Consumption {
  /** True when this presentation consumed the ticket; false when any process consumed it before. */
  won: boolean;
  /** The ticket's session as it is now, or undefined for an unknown session. */
  session: SessionRow | undefined;
  /** What became of the console's registry row, when the presentation carried one and won. */
  registration?: Registration | undefined;
}

const LOST: Consumption = { won: false, session: undefined };

interface Answer {
  i: number;
  won: boolean;
  held: boolean;
  registered: boolean;
}

/**
 * Consumes a batch of tickets, reads their sessions and registers the consoles of the winners, in
 * one statement (the connect path's hot spot; group-committed by the caller). Answers in `batch`
 * order. A jti presented twice in one batch is won by its first presentation only. An interactive
 * console is not registered while an exclusive console of its session is live (a view-only one
 * is); its ticket is used up all the same, as it would be by any refusal after the ticket.
 */
export async function consumeTickets(db: Kysely<Database>, batch: readonly Presentation[]): Promise<Consumption[]> {
  const first = new Map<string, number>();
  batch.forEach((p, i) => first.has(p.jti) || first.set(p.jti, i));
  const unique = [...first.values()].map((i) => batch[i]!);
  const input = JSON.stringify(unique.map(inputRow));
  const { rows } = await sql<SessionRow & Answer>`
    with input as (
      select t.*,
        exists (select 1 from console_live held
                where held.session_id = t.session_id and held.exclusive and held.expires_at > now()) as held
      from json_to_recordset(${input}::json)
        as t(i int, jti text, session_id uuid, expires_at timestamptz, console_id text, replica_id text, view_only boolean, ttl_ms int)
    ), consumed as (
      insert into consumed_tickets (jti, session_id, expires_at)
      select jti, session_id, expires_at from input
      on conflict (jti) do nothing
      returning jti
    ), registered as (
      insert into console_live (id, session_id, replica_id, view_only, exclusive, expires_at)
      select input.console_id, input.session_id, input.replica_id, input.view_only, false, now() + input.ttl_ms * interval '1 millisecond'
      from input
      join consumed on consumed.jti = input.jti
      join console_sessions known on known.id = input.session_id
      where input.console_id is not null and (input.view_only or not input.held)
      returning id
    )
    select input.i, consumed.jti is not null as won, input.held, registered.id is not null as registered, s.*
    from input
    left join consumed on consumed.jti = input.jti
    left join registered on registered.id = input.console_id
    left join console_sessions s on s.id = input.session_id`.execute(db);
  const answers = new Map<string, Consumption>();
  for (const { i, won, held, registered, ...session } of rows) {
    const p = unique[i]!;
    const known = session.id !== null;
    const registration = p.console === undefined || !won ? undefined : registered ? 'added' : known && held ? 'exclusive-held' : 'no-session';
    answers.set(p.jti, { won, session: known ? (session as SessionRow) : undefined, registration });
  }
  return batch.map((p, i) => (first.get(p.jti) === i ? answers.get(p.jti)! : LOST));
}

function inputRow(p: Presentation, i: number) {
  const c = p.console;
  return {
    i,
    jti: p.jti,
    session_id: p.sessionId,
    expires_at: p.expiresAt,
    ...(c === undefined ? {} : { console_id: c.id, replica_id: c.replicaId, view_only: c.viewOnly, ttl_ms: Math.round(c.ttlMs) }),
  };
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
