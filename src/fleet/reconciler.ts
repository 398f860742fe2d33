// The reconciler: a pass over the rules of reconcile-rules.ts, in order, by exactly one process at
// a time. On PostgreSQL the leader holds a session-level advisory lock for the pass (a process
// that dies drops its connection and with it the lock); a pass that finds the lock taken does
// nothing. On the embedded database one process owns the data, so one pass at a time in this
// process is all it takes. `serve` runs passes every RECONCILIATION_INTERVAL seconds; `reconcile`
// runs them alone, or once.
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { actorName, recordAudit } from '../db/audit.js';
import type { Database } from '../db/schema.js';
import type { FleetMetrics } from '../ops/fleet-metrics.js';
import { claimMsFor } from './cleanup.js';
import { RULES, probeForReconciler, type RuleContext, type RuleTally } from './reconcile-rules.js';
import type { RuntimeHook } from './runtime-hook.js';

export interface ReconcilerDeps {
  db: Kysely<Database>;
  /** `postgres`: leadership by advisory lock; `embedded`: this process is the only one. */
  kind: 'postgres' | 'embedded';
  config: Config;
  log: Logger;
  hook?: RuntimeHook;
  metrics?: FleetMetrics;
  /** Probes a ready session's console once; the readiness probe by default. */
  probe?: RuleContext['probe'];
}

export interface PassSummary {
  rules: Record<string, RuleTally>;
  durationMs: number;
  dryRun: boolean;
  /** Set when another reconciler held the lock, so this pass did nothing. */
  skipped?: string;
}

export interface Reconciler {
  /** Runs one pass now (or reports it skipped when one is already running anywhere). */
  runOnce(options?: { dryRun?: boolean }): Promise<PassSummary>;
  /** Resolves once the first pass has finished (led, skipped or failed): the readiness signal. */
  readonly ready: Promise<void>;
  /** The last pass this process ran or skipped. */
  readonly lastPass: PassSummary | undefined;
  stop(): Promise<void>;
}

const LEADER_LOCK = 0x72636e6c; // "rcnl": any constant shared by every replica
const SKIPPED = 'another reconciler is running a pass';

/** True when any rule of the pass had a failed action. */
export const passFailed = (summary: PassSummary): boolean => Object.values(summary.rules).some((r) => r.failed > 0);

/** Runs one pass if this process can lead it; throws only when the database cannot be reached. */
export async function runPass(deps: ReconcilerDeps, options: { dryRun?: boolean } = {}): Promise<PassSummary> {
  const dryRun = options.dryRun ?? false;
  const started = performance.now();
  let led: Record<string, RuleTally> | undefined;
  try {
    led = await lead(deps, () => passRules(deps, dryRun));
  } catch (error) {
    // The database is unreachable, or the lock could not be taken: the whole pass failed.
    deps.metrics?.reconcilerRuns.labels('failed').inc();
    throw error;
  }
  const durationMs = Math.round(performance.now() - started);
  if (led === undefined) {
    deps.metrics?.reconcilerRuns.labels('skipped').inc();
    deps.log.info({ dryRun }, 'reconciler pass skipped: another reconciler is running one');
    return { rules: {}, durationMs, dryRun, skipped: SKIPPED };
  }
  const summary: PassSummary = { rules: led, durationMs, dryRun };
  record(deps, summary);
  return summary;
}

/** Runs `work` holding leadership; undefined when another process holds it. */
async function lead<T>(deps: ReconcilerDeps, work: () => Promise<T>): Promise<T | undefined> {
  if (deps.kind === 'embedded') return work();
  // One pooled connection holds the session-level lock for the whole pass; the rules use others.
  return deps.db.connection().execute(async (conn) => {
    const { rows } = await sql<{ locked: boolean }>`select pg_try_advisory_lock(${LEADER_LOCK}) as locked`.execute(conn);
    if (!rows[0]?.locked) return undefined;
    try {
      return await work();
    } finally {
      await sql`select pg_advisory_unlock(${LEADER_LOCK})`.execute(conn);
    }
  });
}

async function passRules(deps: ReconcilerDeps, dryRun: boolean): Promise<Record<string, RuleTally>> {
  const actor = actorName('reconciler');
  const log = deps.log.child({ component: 'reconciler', actor, dryRun });
  const cleanup = { db: deps.db, log, actor, claimMs: claimMsFor(deps.config.runtimeHookTimeoutSeconds), ...(deps.hook ? { hook: deps.hook } : {}) };
  const rules: Record<string, RuleTally> = {};
  for (const rule of RULES) {
    const ctx: RuleContext = {
      db: deps.db,
      config: deps.config,
      log: log.child({ rule: rule.name }),
      dryRun,
      cleanup,
      ...(deps.hook ? { hook: deps.hook } : {}),
      probe: deps.probe ?? probeForReconciler(deps.config),
      audit: async (entries) => {
        for (const e of entries) log.info({ rule: rule.name, sessionId: e.sessionId, action: e.action, reason: e.reason }, dryRun ? 'reconciler would act (dry run)' : 'reconciler acted');
        await recordAudit(deps.db, actor, entries.map((e) => ({ ...e, rule: rule.name, dryRun })));
      },
    };
    try {
      rules[rule.name] = await rule.run(ctx);
    } catch (error) {
      // One rule's database error must not keep the others from running.
      log.error({ err: error, rule: rule.name }, 'reconciler rule failed; it runs again next pass');
      rules[rule.name] = { found: 0, cleaned: 0, failed: 1 };
    }
  }
  return rules;
}

function record(deps: ReconcilerDeps, summary: PassSummary): void {
  const { metrics, log } = deps;
  const failed = passFailed(summary);
  if (metrics !== undefined) {
    metrics.reconcilerRuns.labels(failed ? 'failed' : 'ok').inc();
    metrics.reconcilerDuration.observe(summary.durationMs / 1000);
    for (const [rule, t] of Object.entries(summary.rules)) {
      metrics.reconcilerFound.labels(rule).inc(t.found);
      metrics.reconcilerCleaned.labels(rule).inc(t.cleaned);
      metrics.reconcilerFailures.labels(rule).inc(t.failed);
    }
    if (!failed) metrics.reconcilerLastSuccess.set(Date.now() / 1000);
  }
  log[failed ? 'warn' : 'info']({ component: 'reconciler', ...summary }, 'reconciler pass finished');
}

/**
 * Runs a pass at once and then every `intervalMs`; one pass at a time in this process (a
 * `runOnce` during a scheduled pass is reported skipped, as another process's would be).
 */
export function startReconciler(deps: ReconcilerDeps, intervalMs: number, scheduled: { dryRun?: boolean } = {}): Reconciler {
  let running: Promise<PassSummary> | undefined;
  let lastPass: PassSummary | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let markReady!: () => void;
  const ready = new Promise<void>((resolve) => (markReady = resolve));

  const runOnce = async (options: { dryRun?: boolean } = {}): Promise<PassSummary> => {
    if (running !== undefined) return { rules: {}, durationMs: 0, dryRun: options.dryRun ?? false, skipped: SKIPPED };
    running = runPass(deps, options);
    try {
      lastPass = await running;
      return lastPass;
    } finally {
      running = undefined;
    }
  };
  const tick = async () => {
    try {
      await runOnce(scheduled);
    } catch (error) {
      deps.log.error({ err: error, component: 'reconciler' }, 'reconciler pass failed; retrying next interval');
    } finally {
      markReady();
      if (!stopped) {
        timer = setTimeout(() => void tick(), intervalMs);
        timer.unref();
      }
    }
  };
  void tick();
  deps.log.info({ component: 'reconciler', intervalSeconds: intervalMs / 1000 }, 'reconciler started');
  return {
    runOnce,
    ready,
    get lastPass() {
      return lastPass;
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running?.catch(() => {});
    },
  };
}
