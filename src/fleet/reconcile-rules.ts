// The reconciler's rules, in the order a pass runs them. Each is one small function that finds
// what is out of order, acts (or, in a dry run, records what it would do) and tallies it. Every
// action and every dry-run decision is a console_audit row; every write is conditional, so a rule
// is idempotent and safe beside anything else touching the same rows.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { AuditEntry } from '../db/audit.js';
import { findUncleaned } from '../db/cleanup-queries.js';
import {
  clearStrikes,
  failStuck,
  findAbandonedProvisioning,
  findReady,
  findStaleLeases,
  findStalePending,
  forgetExpiredTickets,
  releaseStaleLease,
  sessionsByIds,
  strike,
  type Strike,
} from '../db/reconcile-queries.js';
import type { Database, SessionRow } from '../db/schema.js';
import { isEnded, isUuid, targetOf } from '../db/sessions.js';
import { cleanupSession, type CleanupDeps } from './cleanup.js';
import { probeSession, storedCredentials, type ProbeResult } from './probe.js';
import type { RuntimeHook } from './runtime-hook.js';

export interface RuleContext {
  db: Kysely<Database>;
  config: Config;
  log: Logger;
  hook?: RuntimeHook;
  dryRun: boolean;
  cleanup: CleanupDeps;
  /** Records rows for the running rule (its name and the pass's dry-run flag are added). */
  audit(entries: AuditEntry[]): Promise<void>;
  /** Probes a ready session's console once. */
  probe(row: SessionRow): Promise<ProbeResult>;
}

export interface RuleTally {
  found: number;
  cleaned: number;
  failed: number;
}

export interface Rule {
  name: string;
  run(ctx: RuleContext): Promise<RuleTally>;
}

/** Most rows one rule takes on per pass; the rest wait for the next. */
const BATCH = 500;
/** Hooks and probes run at most this many at once, so one slow target never holds up the rest. */
const CONCURRENCY = 8;
const TICKET_GRACE_SECONDS = 3600;

const tally = (found = 0, cleaned = 0, failed = 0): RuleTally => ({ found, cleaned, failed });

/** Runs `work` over `items`, `limit` at a time. */
async function eachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

/** 1. Consumed tickets an hour past their expiry guard nothing: their `exp` refuses them first. */
const expiredTickets: Rule = {
  name: 'expired_tickets',
  async run(ctx) {
    const n = await forgetExpiredTickets(ctx.db, TICKET_GRACE_SECONDS, ctx.dryRun);
    if (n > 0) await ctx.audit([{ sessionId: null, action: 'forget_tickets', reason: `${n} consumed tickets expired over an hour ago` }]);
    return tally(n, ctx.dryRun ? 0 : n);
  },
};

/** 2. Provisioning past the readiness timeout with no gate probing it: the gate that had it died. */
const abandonedProvisioning: Rule = {
  name: 'abandoned_provisioning',
  async run(ctx) {
    if (!ctx.config.readyGatingEnabled) return tally();
    const timeout = ctx.config.readyTimeoutSeconds;
    const rows = await findAbandonedProvisioning(ctx.db, timeout, BATCH);
    const reason = `not ready after ${timeout} s and no readiness gate was probing it`;
    return failAll(ctx, rows, 'provisioning', reason, 'provisioning_abandoned');
  },
};

/** 3. Pending past SESSION_PENDING_TIMEOUT_SECONDS: no VM address was ever committed. */
const stalePending: Rule = {
  name: 'stale_pending',
  async run(ctx) {
    const timeout = ctx.config.sessionPendingTimeoutSeconds;
    const rows = await findStalePending(ctx.db, timeout, BATCH);
    return failAll(ctx, rows, 'pending', `no VM address was committed within ${timeout} s`, 'pending_timeout');
  },
};

async function failAll(ctx: RuleContext, rows: SessionRow[], from: 'pending' | 'provisioning', reason: string, cleanupReason: string): Promise<RuleTally> {
  const result = tally(rows.length);
  for (const row of rows) {
    if (!ctx.dryRun && !(await failStuck(ctx.db, row.id, from, reason, cleanupReason))) continue;
    await ctx.audit([{ sessionId: row.id, action: 'fail_session', reason }]);
    if (!ctx.dryRun) result.cleaned++;
  }
  return result;
}

/** 4. Ended without their cleanup (plain SQL, a process killed halfway, a hook that failed). */
const uncleanedSessions: Rule = {
  name: 'uncleaned_sessions',
  async run(ctx) {
    const rows = await findUncleaned(ctx.db, BATCH);
    const result = tally(rows.length);
    if (ctx.dryRun) {
      await ctx.audit(rows.map((r) => ({ sessionId: r.id, action: 'cleanup', reason: `${r.cleanup_reason ?? r.status}: teardown and port release pending` })));
      return result;
    }
    await eachLimited(rows, CONCURRENCY, async (row) => {
      const outcome = await cleanupSession(ctx.cleanup, row.id);
      if (outcome === 'cleaned') result.cleaned++;
      else if (outcome === 'failed') result.failed++;
    });
    return result;
  },
};

/** 5. Leases that expired, or whose session ended (its cleanup failed); missing sessions cascade. */
const stalePortLeases: Rule = {
  name: 'stale_port_leases',
  async run(ctx) {
    const leases = await findStaleLeases(ctx.db);
    const result = tally(leases.length);
    for (const lease of leases) {
      if (!ctx.dryRun && !(await releaseStaleLease(ctx.db, lease.port, lease.session_id))) continue;
      const why = lease.expired ? 'its lease expired' : 'its session ended';
      await ctx.audit([{ sessionId: lease.session_id, action: 'release_port', reason: `port ${lease.port} released: ${why}` }]);
      if (!ctx.dryRun) result.cleaned++;
    }
    return result;
  },
};

/** 6. Ready sessions whose console refused RECONCILIATION_UNREACHABLE_PROBES passes in a row. */
const unreachableSessions: Rule = {
  name: 'unreachable_sessions',
  async run(ctx) {
    const rows = (await findReady(ctx.db, BATCH)).filter((r) => targetOf(r) !== null);
    const result = tally();
    await eachLimited(rows, CONCURRENCY, async (row) => {
      const probe = await ctx.probe(row);
      if (probe.ok) {
        if (!ctx.dryRun) await clearStrikes(ctx.db, row.id, 'unreachable_probes');
        return;
      }
      const why = `its console did not answer ${ctx.config.reconciliationUnreachableProbes} consecutive passes (last: ${probe.reason})`;
      await strikeOut(ctx, row, 'unreachable_probes', why, result);
    });
    return result;
  },
};

/** 7. With a runtime hook: resources no live session owns are torn down; sessions whose resources are gone are stopped. */
const runtimeOrphans: Rule = {
  name: 'runtime_orphans',
  async run(ctx) {
    if (ctx.hook === undefined) return tally();
    const listed = await ctx.hook.run('list', {}, { namespaces: ctx.config.reconciliationNamespaces });
    if (!listed.ok) {
      // Retried next pass; the other rules have run already, and nothing is stopped on a failed list.
      ctx.log.warn({ error: listed.error }, 'runtime hook list failed; runtime resources are reconciled next pass');
      return tally(0, 0, 1);
    }
    const owners = new Set(listed.resources.map(ownerOf).filter((id): id is string => id !== undefined));
    const result = tally();
    await tearDownOrphans(ctx, [...owners], result);
    await stopResourceless(ctx, owners, result);
    return result;
  },
};

function ownerOf(resource: unknown): string | undefined {
  const id = (resource as { sessionId?: unknown } | null)?.sessionId;
  return isUuid(id) ? id.toLowerCase() : undefined;
}

/** Resources whose session is missing, or ended and already cleaned (an unfinished cleanup is rule 4's). */
async function tearDownOrphans(ctx: RuleContext, owners: string[], result: RuleTally): Promise<void> {
  const known = new Map((await sessionsByIds(ctx.db, owners)).map((r) => [r.id, r]));
  const orphans = owners.filter((id) => {
    const row = known.get(id);
    return row === undefined || (isEnded(row.status) && row.cleanup_completed_at !== null);
  });
  result.found += orphans.length;
  await eachLimited(orphans, CONCURRENCY, async (id) => {
    const row = known.get(id);
    const reason = row === undefined ? 'runtime resources of an unknown session' : `runtime resources of a ${row.status} session`;
    if (ctx.dryRun) return ctx.audit([{ sessionId: id, action: 'teardown_orphan', reason }]);
    const torn = await ctx.hook!.run('teardown', { sessionId: id, ownerId: row?.owner_id ?? null, protocol: row?.protocol, target: row ? targetOf(row) : null, port: row?.last_port ?? null });
    if (torn.ok) result.cleaned++;
    else result.failed++;
    await ctx.audit([{ sessionId: id, action: torn.ok ? 'teardown_orphan' : 'teardown_failed', reason: torn.ok ? reason : `${reason}: ${torn.error}; retried next pass` }]);
  });
}

/** Ready sessions the runtime no longer lists, for RECONCILIATION_UNREACHABLE_PROBES passes in a row. */
async function stopResourceless(ctx: RuleContext, owners: Set<string>, result: RuleTally): Promise<void> {
  const ready = await findReady(ctx.db, BATCH);
  for (const row of ready) {
    if (owners.has(row.id)) {
      if (!ctx.dryRun) await clearStrikes(ctx.db, row.id, 'missing_resource_passes');
      continue;
    }
    const why = `the runtime listed no resources for it ${ctx.config.reconciliationUnreachableProbes} consecutive passes`;
    await strikeOut(ctx, row, 'missing_resource_passes', why, result);
  }
}

/** One more strike; the one that reaches the threshold stops the session and cleans it. */
async function strikeOut(ctx: RuleContext, row: SessionRow, counter: Strike, why: string, result: RuleTally): Promise<void> {
  const threshold = ctx.config.reconciliationUnreachableProbes;
  if (ctx.dryRun) {
    if (row[counter] + 1 < threshold) return;
    result.found++;
    return ctx.audit([{ sessionId: row.id, action: 'stop_session', reason: `orphaned_resource: ${why}` }]);
  }
  const counted = await strike(ctx.db, row.id, counter, threshold);
  if (counted === undefined || !counted.stopped) return;
  result.found++;
  await ctx.audit([{ sessionId: row.id, action: 'stop_session', reason: `orphaned_resource: ${why}` }]);
  const outcome = await cleanupSession(ctx.cleanup, row.id, 'orphaned_resource');
  if (outcome === 'failed') result.failed++;
  else result.cleaned++;
}

/** The rules in the order a pass runs them. */
export const RULES: readonly Rule[] = [
  expiredTickets,
  abandonedProvisioning,
  stalePending,
  uncleanedSessions,
  stalePortLeases,
  unreachableSessions,
  runtimeOrphans,
];

/** The readiness probe as the reconciler uses it: one attempt, with the session's stored credentials. */
export function probeForReconciler(config: Config, attemptTimeoutMs = 3_000) {
  return (row: SessionRow): Promise<ProbeResult> =>
    probeSession(targetOf(row)!, row.protocol, {
      allowed: config.targetAllowedCidrs,
      socketDirs: config.targetAllowedSocketDirs,
      readyPaths: config.readyPaths,
      attemptTimeoutMs,
      ...storedCredentials(row, config),
    });
}
