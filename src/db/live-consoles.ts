// The live-console registry shared by every replica: one row per connected console, renewed by its
// replica while it runs, so a crashed replica's rows expire instead of counting forever. Takeover
// and kick travel as NOTIFY on CONTROL_CHANNEL, to every replica, whoever holds the console.
import { sql, type Kysely } from 'kysely';
import { GatewayError } from '../errors.js';
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
 * Registers a console about to connect. Serialised per session (an advisory lock for the length
 * of the transaction), so "is an exclusive console live?" and the insert are one decision across
 * replicas: a non-exclusive interactive console is refused with CONSOLE_IN_EXCLUSIVE_USE; an
 * exclusive one notifies every replica to take over the session's other interactive consoles.
 */
export async function registerConsole(db: Kysely<Database>, row: LiveRow): Promise<void> {
  await db.transaction().execute(async (tx) => {
    await sql`select pg_advisory_xact_lock(hashtext(${row.sessionId}))`.execute(tx);
    if (!row.viewOnly && !row.exclusive) {
      const held = await tx
        .selectFrom('console_live')
        .select('id')
        .where('session_id', '=', row.sessionId)
        .where('exclusive', '=', true)
        .where('expires_at', '>', sql<Date>`now()`)
        .executeTakeFirst();
      if (held !== undefined) throw new GatewayError('CONSOLE_IN_EXCLUSIVE_USE', 'the console is in exclusive use');
    }
    await tx
      .insertInto('console_live')
      .values({ id: row.id, session_id: row.sessionId, replica_id: row.replicaId, view_only: row.viewOnly, exclusive: row.exclusive, expires_at: inMs(row.ttlMs) })
      .execute();
    // Delivered on commit, when the row is visible: a console registered before it is taken over.
    if (row.exclusive) await sql`select pg_notify(${CONTROL_CHANNEL}, ${`takeover:${row.sessionId}:${row.id}`})`.execute(tx);
  });
}

export async function unregisterConsole(db: Kysely<Database>, id: string): Promise<void> {
  await db.deleteFrom('console_live').where('id', '=', id).execute();
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
