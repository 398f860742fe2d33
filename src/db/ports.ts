// The port pool for platforms that still give each VM console its own port (seed: the VNC port
// pool). Allocation is atomic across processes: a transaction-scoped advisory lock serialises
// allocators, so two VMs starting at once never get the same port and the cap holds exactly.
import { sql, type Kysely } from 'kysely';
import { GatewayError } from '../errors.js';
import type { Database } from './schema.js';

export interface PortRange {
  start: number;
  end: number;
  maxSessions: number;
}

export interface PoolStats {
  total: number;
  allocated: number;
  free: number;
  utilizationPercent: number;
  health: 'healthy' | 'warning' | 'critical';
}

const POOL_LOCK = 0x636f6e73; // "cons": any constant shared by every replica

/** Allocates a port for the session, or returns the one it already holds. */
export async function allocatePort(db: Kysely<Database>, sessionId: string, range: PortRange): Promise<number> {
  return db.transaction().execute(async (tx) => {
    await sql`select pg_advisory_xact_lock(${POOL_LOCK})`.execute(tx);
    const held = await tx.selectFrom('console_ports').select('port').where('session_id', '=', sessionId).executeTakeFirst();
    if (held !== undefined) return held.port;
    const session = await tx.selectFrom('console_sessions').select('status').where('id', '=', sessionId).executeTakeFirst();
    if (session === undefined) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
    if (session.status === 'stopped' || session.status === 'failed') {
      throw new GatewayError('SESSION_ENDED', `session is ${session.status}; it cannot hold a port`);
    }
    const { count } = await tx.selectFrom('console_ports').select((eb) => eb.fn.countAll<string>().as('count')).executeTakeFirstOrThrow();
    if (Number(count) >= Math.min(range.maxSessions, range.end - range.start + 1)) {
      throw new GatewayError('PORTS_EXHAUSTED', `no free console port: ${count} of ${range.maxSessions} allowed are allocated`);
    }
    const { rows } = await sql<{ port: number }>`
      insert into console_ports (port, session_id)
      select p, ${sessionId}::uuid from generate_series(${range.start}::int, ${range.end}::int) as p
      where not exists (select 1 from console_ports where port = p)
      order by p limit 1
      returning port`.execute(tx);
    if (rows[0] === undefined) throw new GatewayError('PORTS_EXHAUSTED', `no free console port in ${range.start}-${range.end}`);
    return rows[0].port;
  });
}

/** Releases the session's port; true when it held one. */
export async function releasePort(db: Kysely<Database>, sessionId: string): Promise<boolean> {
  const result = await db.deleteFrom('console_ports').where('session_id', '=', sessionId).executeTakeFirst();
  return Number(result.numDeletedRows) > 0;
}

export async function portOf(db: Kysely<Database>, sessionId: string): Promise<number | undefined> {
  return (await db.selectFrom('console_ports').select('port').where('session_id', '=', sessionId).executeTakeFirst())?.port;
}

export async function poolStats(db: Kysely<Database>, range: PortRange): Promise<PoolStats> {
  const { count } = await db.selectFrom('console_ports').select((eb) => eb.fn.countAll<string>().as('count')).executeTakeFirstOrThrow();
  const total = Math.min(range.maxSessions, range.end - range.start + 1);
  const allocated = Number(count);
  const utilizationPercent = total === 0 ? 100 : Math.round((allocated / total) * 1000) / 10;
  const health = utilizationPercent >= 95 ? 'critical' : utilizationPercent >= 80 ? 'warning' : 'healthy';
  return { total, allocated, free: Math.max(0, total - allocated), utilizationPercent, health };
}
