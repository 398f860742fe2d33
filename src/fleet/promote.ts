// With the readiness gate off (NOVNC_READY_GATING_ENABLED=false) a committed target is ready at
// once. The API and the CLI write `ready` themselves; a backend committing with plain SQL writes
// only the row, and the trigger cannot read this process's configuration, so this promoter does
// it: on the trigger's NOTIFY, after a LISTEN reconnect, and on a slow scan for what both missed.
// The update is conditioned on `provisioning`, so replicas racing for a session promote it once.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { SessionEvents } from '../db/events.js';
import type { Database } from '../db/schema.js';
import { promoteProvisioning } from '../db/sessions.js';
import type { Metrics } from '../ops/metrics.js';

export interface PromoterDeps {
  db: Kysely<Database>;
  events: SessionEvents;
  log: Logger;
  metrics?: Metrics | undefined;
  /** Fallback scan interval beside the NOTIFY wake-up. */
  scanMs?: number;
}

const SCAN_MS = 5_000;

/** Starts promoting provisioning sessions with a target to ready; stop() waits for the loop. */
export function startPromoter(deps: PromoterDeps): { stop(): Promise<void> } {
  const { db, events, metrics } = deps;
  const log = deps.log.child({ component: 'gate' });
  const stopping = new AbortController();
  let wake: () => void = () => {};
  let again = true;
  const poke = () => {
    again = true;
    wake();
  };
  const onChange = (_id: string, status: string) => status === 'provisioning' && poke();
  events.on('change', onChange);
  events.on('resync', poke);
  log.info('readiness gating disabled (NOVNC_READY_GATING_ENABLED=false): committed targets are ready at once');

  const loop = (async () => {
    while (!stopping.signal.aborted) {
      const woken = new Promise<void>((resolve) => (wake = resolve));
      again = false;
      try {
        for (const id of await promoteProvisioning(db)) {
          metrics?.sessionTransitions.labels('ready').inc();
          log.info({ sessionId: id }, 'session ready: target committed with readiness gating disabled');
        }
      } catch (error) {
        if (!stopping.signal.aborted) log.warn({ err: error }, 'promoting committed sessions failed; retrying');
      }
      if (!again) await Promise.race([woken, new Promise((r) => setTimeout(r, deps.scanMs ?? SCAN_MS).unref())]);
    }
  })();

  return {
    async stop() {
      events.off('change', onChange);
      events.off('resync', poke);
      stopping.abort();
      wake();
      await loop;
    },
  };
}
