// The audit trail of fleet actions (table console_audit): every reconciler action, every decision a
// --dry-run pass did not carry out, and every cleanup of an ended session, whoever ran it.
import { hostname } from 'node:os';
import type { Kysely } from 'kysely';
import type { Database } from './schema.js';

export interface AuditEntry {
  sessionId: string | null;
  action: string;
  reason: string;
  rule?: string;
  dryRun?: boolean;
}

/** Who acts, as the audit and the logs name it: `role@host:pid`. */
export function actorName(role: string): string {
  return `${role}@${hostname()}:${process.pid}`;
}

export async function recordAudit(db: Kysely<Database>, actor: string, entries: readonly AuditEntry[]): Promise<void> {
  if (entries.length === 0) return;
  await db
    .insertInto('console_audit')
    .values(
      entries.map((e) => ({
        session_id: e.sessionId,
        action: e.action,
        reason: e.reason,
        actor,
        rule: e.rule ?? null,
        dry_run: e.dryRun ?? false,
      })),
    )
    .execute();
}

export interface AuditRow {
  sessionId: string | null;
  action: string;
  reason: string;
  actor: string;
  rule: string | null;
  dryRun: boolean;
  createdAt: string;
}

/** The newest rows first; for one session when `sessionId` is given. */
export async function listAudit(db: Kysely<Database>, options: { sessionId?: string; limit?: number } = {}): Promise<AuditRow[]> {
  let query = db.selectFrom('console_audit').selectAll().orderBy('id', 'desc').limit(options.limit ?? 100);
  if (options.sessionId !== undefined) query = query.where('session_id', '=', options.sessionId);
  const rows = await query.execute();
  return rows.map((r) => ({
    sessionId: r.session_id,
    action: r.action,
    reason: r.reason,
    actor: r.actor,
    rule: r.rule,
    dryRun: r.dry_run,
    createdAt: new Date(r.created_at).toISOString(),
  }));
}
