// The live-console registry shared by every replica: one row per connected console, renewed by its
// replica while it runs, so a crashed replica's rows expire instead of counting forever. Takeover
// and kick travel as NOTIFY on CONTROL_CHANNEL, to every replica, whoever holds the console.
import { sql, type Kysely } from 'kysely';
import { CONTROL_CHANNEL, type Database } from './schema.js';

export interface LiveRow {
  id: string;
  sessionId: string;
  replicaId: string;
  viewOnly: boolean;
  exclusive: boolean;
  /** How long the row lives unless its replica renews it. */
  ttlMs: number;
}

const inMs = (ms: number) => sql<Date>`now() + ${Math.round(ms)} * interval '1 millisecond'`;

/** How a registration ended: added, refused for an exclusive console, or the session is gone. */
export type Registration = 'added' | 'exclusive-held' | 'no-session';

/**
 * Registers a batch of non-exclusive consoles in one statement (group-committed by the caller),
 * answering in `rows` order. An interactive console is refused while an exclusive console of its
 * session is live; a view-only one never is. No per-session lock is needed: an exclusive console
 * registering at the same moment notifies on commit, and that notice finds each of these consoles
 * on its replica (pending or live); had it committed first, this statement sees its row.
 */
export async function registerConsoles(db: Kysely<Database>, rows: readonly LiveRow[]): Promise<Registration[]> {
  const input = JSON.stringify(rows.map((r, i) => ({ i, id: r.id, session_id: r.sessionId, replica_id: r.replicaId, view_only: r.viewOnly, ttl_ms: Math.round(r.ttlMs) })));
  const { rows: answers } = await sql<{ i: number; added: boolean; held: boolean }>`
    with input as (
      select t.*, s.id is not null as known,
        exists (select 1 from console_live held
                where held.session_id = t.session_id and held.exclusive and held.expires_at > now()) as held
      from json_to_recordset(${input}::json) as t(i int, id text, session_id uuid, replica_id text, view_only boolean, ttl_ms int)
      left join console_sessions s on s.id = t.session_id
    ), added as (
      insert into console_live (id, session_id, replica_id, view_only, exclusive, expires_at)
      select id, session_id, replica_id, view_only, false, now() + ttl_ms * interval '1 millisecond'
      from input where known and (view_only or not held)
      returning id
    )
    select input.i, added.id is not null as added, input.held from input left join added on added.id = input.id`.execute(db);
  const out = new Array<Registration>(rows.length).fill('no-session');
  for (const { i, added, held } of answers) out[i] = added ? 'added' : held ? 'exclusive-held' : 'no-session';
  return out;
}

/**
 * Registers an exclusive console and, in the same statement, notifies every replica to take over
 * the session's other interactive consoles (delivered on commit, when the row is visible).
 */
export async function registerExclusiveConsole(db: Kysely<Database>, row: LiveRow): Promise<void> {
  await sql`
    with added as (
      insert into console_live (id, session_id, replica_id, view_only, exclusive, expires_at)
      values (${row.id}, ${row.sessionId}, ${row.replicaId}, false, true, ${inMs(row.ttlMs)})
      returning id
    )
    select pg_notify(${CONTROL_CHANNEL}, ${`takeover:${row.sessionId}:${row.id}`}) from added`.execute(db);
}

/** Removes a batch of consoles' rows in one statement. */
export async function unregisterConsoles(db: Kysely<Database>, ids: readonly string[]): Promise<void[]> {
  await db.deleteFrom('console_live').where('id', 'in', ids).execute();
  return ids.map(() => undefined);
}

/** Renews every row of `replicaId`, and forgets rows that expired a while ago (crashed replicas). */
export async function renewConsoles(db: Kysely<Database>, replicaId: string, ttlMs: number): Promise<void> {
  await db.updateTable('console_live').set({ expires_at: inMs(ttlMs) }).where('replica_id', '=', replicaId).execute();
  await db.deleteFrom('console_live').where('expires_at', '<', inMs(-10 * ttlMs)).execute();
}

/** The session's live consoles across replicas: how many, and whether one is exclusive. */
export async function countConsoles(db: Kysely<Database>, sessionId: string): Promise<{ live: number; exclusive: boolean }> {
  const row = await db
    .selectFrom('console_live')
    .select([sql<number>`count(*)::int`.as('live'), sql<boolean>`coalesce(bool_or(exclusive), false)`.as('exclusive')])
    .where('session_id', '=', sessionId)
    .where('expires_at', '>', sql<Date>`now()`)
    .executeTakeFirstOrThrow();
  return { live: Number(row.live), exclusive: row.exclusive };
}

/** Asks every replica to close the session's live consoles; returns how many are live now. */
export async function kickConsoles(db: Kysely<Database>, sessionId: string): Promise<number> {
  return db.transaction().execute(async (tx) => {
    const { live } = await countConsoles(tx, sessionId);
    await sql`select pg_notify(${CONTROL_CHANNEL}, ${`kick:${sessionId}`})`.execute(tx);
    return live;
  });
}
