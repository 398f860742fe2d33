// The readiness gate, so a console is never marked ready before its VNC server answers. Every
// `provisioning` session is probed until it speaks or its deadline passes: success → `ready` (the
// NOTIFY trigger wakes waiting upgrades), timeout → `failed` with a one-line reason, diagnostics
// from the runtime hook, a best-effort teardown and its port released. Any number of gate
// processes may run against one database: a lease in the row (db/gate-queries.ts) keeps each
// session with one prober at a time, and every transition is conditioned on `provisioning`.
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { hostname } from 'node:os';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { SessionEvents } from '../db/events.js';
import { claimProvisioning, failProvisioning, releaseLeases, renewLease, targetKey, type Claim, type ProbeState } from '../db/gate-queries.js';
import { portOf } from '../db/ports.js';
import type { Database, SessionRow } from '../db/schema.js';
import { isSocketTarget, markReady, targetOf, type Target } from '../db/sessions.js';
import type { Metrics } from '../ops/metrics.js';
import { probeSession, storedCredentials, type ProbeResult } from './probe.js';
import { redactOwner, truncate } from '../ops/redact.js';
import { startPromoter } from './promote.js';
import { hookSessionOf, type RuntimeHook } from './runtime-hook.js';
import { claimMsFor, cleanupSession } from './cleanup.js';
import { actorName } from '../db/audit.js';

export interface GateDeps {
  db: Kysely<Database>;
  events: SessionEvents;
  log: Logger;
  metrics?: Metrics;
  config: Config;
  hook?: RuntimeHook;
  /** Tuning for tests; the defaults suit production. */
  timings?: Partial<GateTimings>;
}

export interface GateTimings {
  /** Fallback scan for provisioning sessions, beside the NOTIFY wake-up. */
  scanMs: number;
  /** How long a claim holds without renewal; a crashed gate's sessions are taken over after it. */
  leaseMs: number;
  /** Sessions one gate process probes at once. */
  maxProbing: number;
}

export interface Gate {
  stop(): Promise<void>;
}

const DEFAULT_TIMINGS: GateTimings = { scanMs: 2_000, leaseMs: 30_000, maxProbing: 256 };
const HISTORY = 20;

interface Attempt {
  at: string;
  ok: boolean;
  reason?: string;
  elapsedMs: number;
}

/** Starts the gate; with NOVNC_READY_GATING_ENABLED=false it only promotes committed targets to ready. */
export function startGate(deps: GateDeps): Gate {
  const { db, events, config } = deps;
  if (!config.readyGatingEnabled) return startPromoter(deps);
  const timings = { ...DEFAULT_TIMINGS, ...deps.timings };
  const owner = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  const log = deps.log.child({ component: 'gate', gate: owner });
  const stopping = new AbortController();
  // Every probing session listens on this one signal: hundreds are normal, not a leak.
  setMaxListeners(0, stopping.signal);
  const probing = new Map<string, Promise<void>>();
  let wake: () => void = () => {};
  let rescan = false;
  const onChange = (_id: string, status: string) => status === 'provisioning' && poke();
  const poke = () => {
    rescan = true;
    wake();
  };
  events.on('change', onChange);
  events.on('resync', poke);
  log.info({ timeoutSeconds: config.readyTimeoutSeconds }, 'readiness gate started');

  const scanning = (async () => {
    while (!stopping.signal.aborted) {
      const woken = new Promise<void>((resolve) => (wake = resolve));
      rescan = false;
      try {
        const claims = await claimProvisioning(db, owner, timings.leaseMs, config.readyTimeoutSeconds * 1000, timings.maxProbing - probing.size);
        for (const claim of claims) {
          if (probing.has(claim.row.id)) continue;
          const done = probeUntilDecided({ ...deps, log }, timings, owner, claim, stopping.signal)
            .catch((error) => log.error({ err: error, sessionId: claim.row.id }, 'readiness gate error; the session will be retried'))
            .finally(() => {
              probing.delete(claim.row.id);
              poke(); // a slot is free: there may be sessions waiting for one
            });
          probing.set(claim.row.id, done);
        }
      } catch (error) {
        if (!stopping.signal.aborted) log.warn({ err: error }, 'readiness gate scan failed; retrying');
      }
      if (!rescan) await sleep(timings.scanMs, stopping.signal, woken);
    }
  })();

  let stopped: Promise<void> | undefined;
  return {
    stop: () =>
      (stopped ??= (async () => {
        events.off('change', onChange);
        events.off('resync', poke);
        stopping.abort();
        wake();
        await scanning;
        const ids = [...probing.keys()];
        await Promise.allSettled(probing.values());
        // Hand the unfinished sessions to another gate at once rather than after the lease.
        await releaseLeases(db, owner, ids).catch((error) => log.warn({ err: error }, 'releasing probe leases failed'));
        log.info('readiness gate stopped');
      })()),
  };
}

/** Probes one claimed session until it is ready, failed, taken by someone else, or the gate stops. */
async function probeUntilDecided(deps: GateDeps, timings: GateTimings, owner: string, claim: Claim, signal: AbortSignal): Promise<void> {
  const { db, config, metrics } = deps;
  const id = claim.row.id;
  const log = deps.log.child({ sessionId: id });
  const timeoutMs = config.readyTimeoutSeconds * 1000;
  // The deadline on our clock: the database's clock decided it, ours counts down to it.
  let deadline = Date.now() + (claim.deadline.getTime() - claim.dbNow.getTime());
  let committedAt = deadline - timeoutMs;
  let shift = 0;
  const pollMs = config.readyPollIntervalSeconds * 1000;
  const attemptTimeoutMs = Math.min(5_000, Math.max(1_000, 2 * pollMs));
  let row: SessionRow = claim.row;
  let target = targetOf(row)!;
  const history: Attempt[] = [];
  let attempts = (claim.row.diagnostics as { probe?: ProbeState } | null)?.probe?.attempts ?? 0;
  let last: ProbeResult | undefined;
  let renewAt = Date.now() + timings.leaseMs / 3;
  const state = (): ProbeState => ({
    deadline: new Date(claim.deadline.getTime() + shift).toISOString(),
    target: targetKey(row),
    attempts,
    ...(last !== undefined && !last.ok ? { lastReason: last.reason } : {}),
  });

  /**
   * Renews the lease and takes the row as it now is. A target committed again meanwhile (plain
   * SQL) moved provisioning_since: its deadline moves by as much. False when no longer ours.
   */
  const renew = async (): Promise<boolean> => {
    const renewed = await renewLease(db, id, owner, timings.leaseMs, state());
    if (renewed === undefined) return false;
    const moved = renewed.provisioning_since !== null && row.provisioning_since !== null ? sinceOf(renewed) - sinceOf(row) : 0;
    shift += moved;
    deadline += moved;
    committedAt += moved;
    row = renewed;
    target = targetOf(row)!;
    renewAt = Date.now() + timings.leaseMs / 3;
    return true;
  };

  for (let n = 0; ; n++) {
    if (signal.aborted) return;
    if (Date.now() >= renewAt && !(await renew())) return log.debug('session left provisioning or its lease moved on; probing stopped');

    last = await probeSession(target, row.protocol, {
      allowed: config.targetAllowedCidrs,
      socketDirs: config.targetAllowedSocketDirs,
      readyPaths: config.readyPaths,
      attemptTimeoutMs,
      signal,
      ...storedCredentials(row, config),
    });
    if (signal.aborted) return;
    attempts++;
    metrics?.probes.labels(last.ok ? 'ok' : 'failed').inc();
    metrics?.probeSeconds.observe({ result: last.ok ? 'ok' : 'failed' }, last.elapsedMs / 1000);
    if (!last.ok) metrics?.probeFailures.inc({ kind: last.kind });
    history.push({ at: new Date().toISOString(), ok: last.ok, ...(last.ok ? {} : { reason: last.reason }), elapsedMs: last.elapsedMs });
    if (history.length > HISTORY) history.shift();

    if (last.ok) {
      const ready = await markReady(db, id, target);
      if (ready !== undefined) {
        metrics?.sessionTransitions.labels('ready').inc();
        log.info(
          { ...logged(target), protocol: row.protocol, attempts, elapsedMs: Math.round(Date.now() - committedAt), probeMs: last.elapsedMs },
          `readiness probe succeeded: session ready (elapsed ${((Date.now() - committedAt) / 1000).toFixed(1)} s)`,
        );
        return;
      }
      // Retargeted (by plain SQL) while we probed the old address, or decided elsewhere: re-read.
      renewAt = 0;
      continue;
    }
    log.debug({ attempt: attempts, reason: last.reason, probeMs: last.elapsedMs }, 'readiness probe attempt failed');

    if (last.forbidden || Date.now() >= deadline) {
      // Re-read before failing: a target committed again since has a deadline of its own.
      const before = deadline;
      if (!(await renew())) return log.debug('session left provisioning or its lease moved on; probing stopped');
      if (deadline !== before) {
        n = -1;
        continue;
      }
      await failAndTeardown({ ...deps, log }, timings, owner, row, target, last.reason, { attempts, deadline: state().deadline, history }, Date.now() - committedAt, last.forbidden === true);
      return;
    }
    // Capped exponential backoff with ±20 % jitter, so sessions committed together spread out;
    // the last attempt lands on the deadline.
    const backoff = Math.min(pollMs * 1.5 ** n, Math.max(pollMs, 4 * pollMs)) * (0.8 + 0.4 * Math.random());
    await sleep(Math.max(0, Math.min(backoff, deadline - Date.now())), signal);
  }
}

async function failAndTeardown(
  deps: GateDeps,
  timings: GateTimings,
  owner: string,
  row: SessionRow,
  target: Target,
  lastReason: string,
  probe: { attempts: number; deadline: string; history: Attempt[] },
  elapsedMs: number,
  forbidden: boolean,
): Promise<void> {
  const { db, log, metrics, hook, config } = deps;
  const id = row.id;
  // Diagnostics and teardown may take two hook timeouts: hold the lease through them.
  const hookBudgetMs = 2 * config.runtimeHookTimeoutSeconds * 1000 + timings.leaseMs;
  if ((await renewLease(db, id, owner, hookBudgetMs, { deadline: probe.deadline, target: targetKey(row), attempts: probe.attempts, lastReason })) === undefined) {
    return log.debug('session left provisioning before it could be failed');
  }
  const hookSession = hookSessionOf(row, await portOf(db, id));
  const runtime = hook === undefined ? undefined : await hook.run('diagnostics', hookSession);
  const seconds = (elapsedMs / 1000).toFixed(1);
  const reason = forbidden ? lastReason : `not ready after ${seconds} s: ${lastReason}`;
  const failed = await failProvisioning(db, id, owner, reason, {
    probe,
    runtime: runtime ?? { ok: false, output: '', error: 'no runtime hook configured (RUNTIME_HOOK_COMMAND)' },
  });
  if (failed === undefined) return log.debug('session left provisioning before it could be failed');
  metrics?.sessionTransitions.labels('failed').inc();
  log.error(
    { owner: redactOwner(row.owner_id), ...logged(target), protocol: row.protocol, attempts: probe.attempts, elapsedMs: Math.round(elapsedMs), reason },
    'readiness probe failed: session marked failed',
  );
  log.warn(
    { hookOk: runtime?.ok, hookError: runtime?.error, diagnostics: truncate(runtime?.output ?? '', 1024, 'tail') },
    'diagnostics collected for the failed session',
  );
  if (failed.releasedPort !== undefined) log.info({ port: failed.releasedPort }, 'console port released');
  // The shared cleanup runs the teardown once, whoever gets there first; a failed one is retried
  // by the reconciler.
  await cleanupSession({ db, log, actor: actorName('gate'), claimMs: claimMsFor(config.runtimeHookTimeoutSeconds), ...(hook ? { hook } : {}) }, id, 'failed');
}

/** Where a target is, as log fields: the VM's port, or its socket path. */
function logged(target: Target): { port: number } | { socket: string } {
  return isSocketTarget(target) ? { socket: target.socket } : { port: target.port };
}

/** When the row's current target was committed, in ms on the database's clock. */
function sinceOf(row: SessionRow): number {
  return new Date(row.provisioning_since!).getTime();
}

/** Resolves after `ms`, when `woken` settles, or when `signal` aborts, whichever is first. */
function sleep(ms: number, signal: AbortSignal, woken?: Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    void woken?.then(done);
  });
}
