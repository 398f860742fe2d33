// `console-gateway diagnose ID`: what an operator needs to answer "why does this console not work",
// in one report: the session's state, a live probe, the stored failure and diagnostics and the
// runtime's own view. Admin-only (a CLI command, never an HTTP route): even redacted, runtime
// output is not for tenants. Nothing in it holds a ticket; owner ids appear as `****abc123`.
import type { Kysely } from 'kysely';
import type { Config } from '../config.js';
import { portOf } from '../db/ports.js';
import { listAudit } from '../db/audit.js';
import type { Database } from '../db/schema.js';
import { describeTarget, requireSession, targetOf } from '../db/sessions.js';
import { probeSession, storedCredentials, type ProbeResult } from '../fleet/probe.js';
import { redactOwner, redactOwnerIn, redactText, redactValue, truncate } from '../ops/redact.js';
import { hookSessionOf, secretsOf, type HookResult, type RuntimeHook } from '../fleet/runtime-hook.js';

export interface DiagnoseDeps {
  db: Kysely<Database>;
  config: Config;
  hook?: RuntimeHook;
  /** Values that must not appear in the report; default: TICKET_SECRET, CONTROL_TOKEN, DATABASE_URL. */
  secrets?: readonly (string | undefined)[];
  probeTimeoutMs?: number;
}

export interface Diagnosis {
  /** The session is `ready` and its console answers a probe right now. */
  healthy: boolean;
  report: Record<string, unknown>;
}

const KEEP_CHARS = 4 * 1024;
const iso = (d: Date | string | null) => (d === null ? null : new Date(d).toISOString());

/** Builds the report for session `id`; throws SESSION_NOT_FOUND for an unknown id. */
export async function diagnose(deps: DiagnoseDeps, id: string): Promise<Diagnosis> {
  const { db, config, hook } = deps;
  const row = await requireSession(db, id);
  const target = targetOf(row);
  const port = await portOf(db, row.id);
  const secrets = deps.secrets ?? secretsOf(config);
  const scrub = (text: string) => redactText(redactOwnerIn(text, row.owner_id), secrets);
  const base = config.publicUrl ?? `http://localhost:${config.port}`;

  let probe: (ProbeResult & { target: string }) | { skipped: string };
  if (target === null) {
    probe = { skipped: 'no target committed yet' };
  } else {
    const result = await probeSession(target, row.protocol, {
      allowed: config.targetAllowedCidrs,
      socketDirs: config.targetAllowedSocketDirs,
      readyPaths: config.readyPaths,
      attemptTimeoutMs: deps.probeTimeoutMs ?? 2_000,
      ...storedCredentials(row, config),
    });
    probe = { ...result, ...(result.ok ? {} : { reason: scrub(result.reason) }), target: describeTarget(target) };
  }

  let runtime: HookResult | { skipped: string };
  if (hook === undefined) {
    runtime = { skipped: 'no runtime hook configured (RUNTIME_HOOK_COMMAND)' };
  } else {
    runtime = await hook.run('diagnostics', hookSessionOf(row, port));
  }

  const probeOk = 'ok' in probe && probe.ok;
  const healthy = row.status === 'ready' && probeOk;
  const stored = redactValue(row.diagnostics ?? null, scrub, KEEP_CHARS);
  return {
    healthy,
    report: {
      healthy,
      verdict: verdict(row.status, probe),
      session: {
        id: row.id,
        status: row.status,
        protocol: row.protocol,
        owner: redactOwner(row.owner_id),
        target: target === null ? null : { ...target, ...(row.target_credentials !== null ? { credentials: { stored: true } } : {}) },
        port: port ?? null,
        createdAt: iso(row.created_at),
        updatedAt: iso(row.updated_at),
        readyAt: iso(row.ready_at),
        finishedAt: iso(row.finished_at),
      },
      // What the fleet did about it: cleanup state and the latest audit rows, newest first.
      cleanup: {
        reason: row.cleanup_reason,
        completedAt: iso(row.cleanup_completed_at),
        attempts: row.cleanup_attempts,
        error: row.cleanup_error === null ? null : truncate(scrub(row.cleanup_error), KEEP_CHARS),
        unreachableProbes: row.unreachable_probes,
      },
      audit: (await listAudit(db, { sessionId: row.id, limit: 10 })).map((a) => ({ ...a, reason: scrub(a.reason) })),
      // The ticket is minted per visit by the platform; a real one never belongs in a report.
      expectedConsoleUrl: `${base}/console?ticket=<minted by your platform>`,
      probe,
      failureReason: row.failure_reason === null ? null : truncate(scrub(row.failure_reason), KEEP_CHARS),
      storedDiagnostics: stored,
      runtime,
    },
  };
}

function verdict(status: string, probe: ProbeResult | { skipped: string }): string {
  const answers = 'ok' in probe && probe.ok;
  switch (status) {
    case 'ready':
      return answers ? 'healthy: ready and the console answers' : 'unhealthy: marked ready but the console does not answer now';
    case 'provisioning':
      return answers ? 'provisioning: the console answers; the gate should mark it ready shortly' : 'provisioning: the console does not answer yet';
    case 'pending':
      return 'pending: the VM address has not been committed';
    case 'failed':
      return 'failed: see failureReason and storedDiagnostics';
    default:
      return 'stopped';
  }
}
