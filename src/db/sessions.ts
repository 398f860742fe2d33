// Console session queries. Each takes `db` first (kysely example style) and returns rows or throws a
// GatewayError with a code the callers can branch on.
import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import { GatewayError } from '../errors.js';
import type { Database, Protocol, SessionRow, SessionStatus } from './schema.js';

/** A VM's console on an address: a VNC port, or a websockify endpoint (with `path` and `webRoot`). */
export interface AddressTarget {
  host: string;
  port: number;
  path: string | null;
  /** websockify only: false when the endpoint serves no noVNC pages (the gate skips the HTTP step). */
  webRoot?: boolean;
}

/** A VM's VNC server on a unix socket on the gateway's host. */
export interface SocketTarget {
  socket: string;
}

export type Target = AddressTarget | SocketTarget;

export const isSocketTarget = (target: Target): target is SocketTarget => 'socket' in target;

/** One line for logs and reports: `host:port/path` or `unix:/path`. */
export function describeTarget(target: Target): string {
  return isSocketTarget(target) ? `unix:${target.socket}` : `${target.host}:${target.port}${target.path ?? ''}`;
}

/** A session as the API and CLI answer it (README "HTTP surface"). */
export interface SessionView {
  id: string;
  status: SessionStatus;
  protocol: Protocol;
  ownerId: string | null;
  target: (Target & { credentials?: { stored: true } }) | null;
  createdAt: string;
  readyAt: string | null;
  finishedAt: string | null;
  failureReason: string | null;
  /** Why the ended session was cleaned (stopped, failed, pending_timeout, provisioning_abandoned, orphaned_resource). */
  cleanupReason: string | null;
  cleanupCompletedAt: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

const iso = (d: Date | string | null): string | null => (d === null ? null : new Date(d).toISOString());

export function targetOf(row: SessionRow): Target | null {
  if (row.target_socket !== null) return { socket: row.target_socket };
  if (row.target_host === null || row.target_port === null) return null;
  const target = { host: row.target_host, port: row.target_port, path: row.target_path };
  return row.protocol === 'websockify' ? { ...target, webRoot: row.target_web_root } : target;
}

/** The columns a target is stored in; every one is written, so a new target replaces the old. */
export function targetColumns(target: Target | null) {
  const address = target === null || isSocketTarget(target) ? undefined : target;
  return {
    target_host: address?.host ?? null,
    target_port: address?.port ?? null,
    target_path: address?.path ?? null,
    target_socket: target !== null && isSocketTarget(target) ? target.socket : null,
    target_web_root: address?.webRoot ?? true,
  };
}

export function viewOf(row: SessionRow): SessionView {
  return {
    id: row.id,
    status: row.status,
    protocol: row.protocol,
    ownerId: row.owner_id,
    target: storedMark(targetOf(row), row),
    createdAt: iso(row.created_at)!,
    readyAt: iso(row.ready_at),
    finishedAt: iso(row.finished_at),
    failureReason: row.failure_reason,
    cleanupReason: row.cleanup_completed_at === null ? null : row.cleanup_reason,
    cleanupCompletedAt: iso(row.cleanup_completed_at),
  };
}

/** A target answers whether credentials are stored, never what they are. */
function storedMark(target: Target | null, row: SessionRow): (Target & { credentials?: { stored: true } }) | null {
  return target !== null && row.target_credentials !== null ? { ...target, credentials: { stored: true } } : target;
}

export const isEnded = (status: SessionStatus): boolean => status === 'stopped' || status === 'failed';

export async function getSession(db: Kysely<Database>, id: string): Promise<SessionRow | undefined> {
  if (!isUuid(id)) return undefined;
  return db.selectFrom('console_sessions').selectAll().where('id', '=', id).executeTakeFirst();
}

export async function requireSession(db: Kysely<Database>, id: string): Promise<SessionRow> {
  const row = await getSession(db, id);
  if (row === undefined) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
  return row;
}

export interface NewSession {
  id?: string;
  protocol: Protocol;
  ownerId?: string | null;
  target?: Target | null;
  /** With gating disabled a committed target is ready at once. */
  gatingEnabled: boolean;
}

export async function createSession(db: Kysely<Database>, input: NewSession): Promise<SessionRow> {
  const id = input.id ?? randomUUID();
  const target = input.target ?? null;
  const row = await db
    .insertInto('console_sessions')
    .values({
      id,
      protocol: input.protocol,
      owner_id: input.ownerId ?? null,
      ...targetColumns(target),
      ...(target !== null && !input.gatingEnabled ? { status: 'ready' as const } : {}),
    })
    .onConflict((oc) => oc.column('id').doNothing())
    .returningAll()
    .executeTakeFirst();
  if (row === undefined) throw new GatewayError('CONFLICT', `a session with id ${id} already exists`);
  return row;
}

/** Commits the VM address. Ended sessions cannot be retargeted. */
export async function commitTarget(db: Kysely<Database>, id: string, target: Target, gatingEnabled: boolean): Promise<SessionRow> {
  const row = await db
    .updateTable('console_sessions')
    .set({
      ...targetColumns(target),
      status: gatingEnabled ? 'provisioning' : 'ready',
      ready_at: null,
      probe_owner: null,
      probe_lease_until: null,
      // A new address starts the reconciler's counts afresh.
      unreachable_probes: 0,
      missing_resource_passes: 0,
    })
    .where('id', '=', id)
    .where('status', 'not in', ['stopped', 'failed'])
    .returningAll()
    .executeTakeFirst();
  if (row !== undefined) return row;
  const existing = await requireSession(db, id);
  throw new GatewayError('SESSION_ENDED', `session is ${existing.status}; create a new session`);
}

/** Marks the session stopped (idempotent) and releases its port. Returns the row as it now is. */
export async function stopSession(db: Kysely<Database>, id: string): Promise<SessionRow> {
  await requireSession(db, id);
  return db.transaction().execute(async (tx) => {
    await tx.deleteFrom('console_ports').where('session_id', '=', id).execute();
    const stopped = await tx
      .updateTable('console_sessions')
      .set({ status: 'stopped' })
      .where('id', '=', id)
      .where('status', 'not in', ['stopped', 'failed'])
      .returningAll()
      .executeTakeFirst();
    return stopped ?? (await requireSession(tx, id));
  });
}

/** Provisioning → ready, only if the target is still the one that was probed. */
export async function markReady(db: Kysely<Database>, id: string, probed: Target): Promise<SessionRow | undefined> {
  return db
    .updateTable('console_sessions')
    .set({ status: 'ready', probe_owner: null, probe_lease_until: null })
    .where('id', '=', id)
    .where('status', '=', 'provisioning')
    .where((eb) => {
      const columns = targetColumns(probed);
      return eb.and([
        eb('target_host', 'is not distinct from', columns.target_host),
        eb('target_port', 'is not distinct from', columns.target_port),
        eb('target_socket', 'is not distinct from', columns.target_socket),
      ]);
    })
    .returningAll()
    .executeTakeFirst();
}

/** Replaces the sealed VNC credentials of a session's target (null: none are stored). */
export async function setTargetCredentials(db: Kysely<Database>, id: string, sealed: string | null): Promise<SessionRow> {
  const row = await db.updateTable('console_sessions').set({ target_credentials: sealed }).where('id', '=', id).returningAll().executeTakeFirst();
  if (row === undefined) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
  return row;
}

/**
 * Provisioning → ready for every session with a committed target (readiness gating disabled).
 * Conditioned on the status, so of several replicas racing only one promotes a session.
 */
export async function promoteProvisioning(db: Kysely<Database>): Promise<string[]> {
  const rows = await db
    .updateTable('console_sessions')
    .set({ status: 'ready', probe_owner: null, probe_lease_until: null })
    .where('status', '=', 'provisioning')
    .where((eb) => eb.or([eb.and([eb('target_host', 'is not', null), eb('target_port', 'is not', null)]), eb('target_socket', 'is not', null)]))
    .returning('id')
    .execute();
  return rows.map((r) => r.id);
}
