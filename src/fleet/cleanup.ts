// Cleaning an ended session: its consoles were closed on every replica by the status change's
// NOTIFY; what is left is the runtime teardown hook and the pool port. Whoever ends a session
// (the API, the CLI, the gate, the reconciler) calls cleanupSession; sessions ended by plain SQL
// are found by the reconciler. The claim in db/cleanup-queries.ts makes it happen once.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { abandonCleanup, claimCleanup, completeCleanup, portForTeardown } from '../db/cleanup-queries.js';
import type { Database } from '../db/schema.js';
import { hookSessionOf, type RuntimeHook } from './runtime-hook.js';

export interface CleanupDeps {
  db: Kysely<Database>;
  log: Logger;
  hook?: RuntimeHook;
  /** Named in the claim and the audit: role@host:pid. */
  actor: string;
  /** How long a claim holds: past it, a cleaner that died halfway is replaced. */
  claimMs: number;
}

export type CleanupOutcome = 'cleaned' | 'failed' | 'not-needed';

/** Claim time for a hook that may take its whole timeout plus the kill grace, with a margin. */
export function claimMsFor(hookTimeoutSeconds: number): number {
  return hookTimeoutSeconds * 1000 + 30_000;
}

/**
 * Cleans the ended session `id` unless it is cleaned already or another cleaner holds it.
 * `reason` is kept only when whoever ended the session gave none. Never throws for a failed hook:
 * the claim is given back and the next reconciler pass retries.
 */
export async function cleanupSession(deps: CleanupDeps, id: string, reason?: string): Promise<CleanupOutcome> {
  const { db, log, hook, actor } = deps;
  const row = await claimCleanup(db, id, actor, deps.claimMs);
  if (row === undefined) return 'not-needed';
  const port = await portForTeardown(db, row);
  let detail = 'no runtime hook configured';
  if (hook !== undefined) {
    const result = await hook.run('teardown', hookSessionOf(row, port));
    if (!result.ok) {
      const error = result.error ?? 'the runtime hook failed';
      await abandonCleanup(db, id, actor, error);
      log.warn({ sessionId: id, error, elapsedMs: result.elapsedMs }, 'teardown of an ended session failed; it is retried next pass');
      return 'failed';
    }
    detail = 'teardown completed';
  }
  const done = await completeCleanup(db, id, actor, reason ?? row.status, detail);
  if (done === undefined) return 'not-needed';
  log.info({ sessionId: id, cleanupReason: done.row.cleanup_reason, port: done.releasedPort }, 'ended session cleaned');
  return 'cleaned';
}
