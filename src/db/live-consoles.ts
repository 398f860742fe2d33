// The live-console registry shared by every replica: one row per connected console, renewed by its
// replica while it runs, so a crashed replica's rows expire instead of counting forever. Takeover
// and kick travel as NOTIFY on CONTROL_CHANNEL, to every replica, whoever holds the console. An
// interactive or view-only console is registered by its ticket's consume (tickets.ts); an
// exclusive one here, once its VM answered, since registering it takes the others over.
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

/**
 * How a registration ended: added, refused for an exclusive console, or the session is gone. No
 * per-session lock is needed to refuse: an exclusive console registering at the same moment
 * notifies on commit, and that notice finds each console on its replica (pending or live); had it
 * committed first, the registering statement sees its row.
 */
export type Registration = 'added' | 'exclusive-held' | 'no-session';

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
