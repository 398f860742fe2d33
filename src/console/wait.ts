// The bounded wait for a session's VM address: the browser's WebSocket often arrives before the
// backend has committed the VM's IP, and must wait for it rather than fail. Woken at once by the database trigger's NOTIFY;
// polling with backoff covers a lost notification or a LISTEN connection that is reconnecting.
import type { Kysely } from 'kysely';
import { GatewayError } from '../errors.js';
import { getSession, isEnded, targetOf } from '../db/sessions.js';
import type { SessionEvents } from '../db/events.js';
import type { Database, SessionRow } from '../db/schema.js';

export interface WaitOptions {
  budgetMs: number;
  /** With the readiness gate disabled, a committed address is connectable at once. */
  gatingEnabled: boolean;
  signal?: AbortSignal;
  /** The session as just read by the caller: when it is already decided, no query is needed. */
  current?: SessionRow | undefined;
  pollMinMs?: number;
  pollMaxMs?: number;
}

const POLL_MIN_MS = 500;
const POLL_MAX_MS = 4_000;

export function isConnectable(row: SessionRow, gatingEnabled: boolean): boolean {
  if (targetOf(row) === null) return false;
  return row.status === 'ready' || (!gatingEnabled && row.status === 'provisioning');
}

/** The reason a person reads when a session can no longer be served. */
export function endedMessage(row: SessionRow): string {
  return row.status === 'failed'
    ? `the console failed: ${row.failure_reason ?? 'no reason recorded'}`
    : 'the console session was stopped';
}

/**
 * Resolves with the session once it is connectable. Throws SESSION_NOT_FOUND, SESSION_ENDED,
 * WAIT_TIMEOUT when the budget runs out, or the signal's reason when aborted.
 */
export async function waitForSession(
  db: Kysely<Database>,
  events: SessionEvents,
  id: string,
  options: WaitOptions,
): Promise<SessionRow> {
  const { budgetMs, gatingEnabled, signal, current } = options;
  if (current !== undefined) {
    if (isEnded(current.status)) throw new GatewayError('SESSION_ENDED', endedMessage(current));
    if (isConnectable(current, gatingEnabled)) return current;
  }
  const deadline = Date.now() + budgetMs;
  let poll = options.pollMinMs ?? POLL_MIN_MS;
  let wake: () => void = () => {};
  const onChange = (changed: string) => changed === id && wake();
  const onResync = () => wake();
  events.on('change', onChange);
  events.on('resync', onResync);
  try {
    for (;;) {
      // Armed before the read, so a change committed between the read and the sleep still wakes us.
      const woken = new Promise<void>((resolve) => (wake = resolve));
      const row = await getSession(db, id);
      if (row === undefined) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
      if (isEnded(row.status)) throw new GatewayError('SESSION_ENDED', endedMessage(row));
      if (isConnectable(row, gatingEnabled)) return row;
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const what = targetOf(row) === null ? 'the VM address was not committed' : 'the console did not become ready';
        throw new GatewayError('WAIT_TIMEOUT', `${what} within ${Math.round(budgetMs / 1000)} s; try again`);
      }
      signal?.throwIfAborted();
      await sleepUntil(woken, Math.min(poll, remaining), signal);
      poll = Math.min(poll * 2, options.pollMaxMs ?? POLL_MAX_MS);
    }
  } finally {
    events.off('change', onChange);
    events.off('resync', onResync);
  }
}

function sleepUntil(woken: Promise<void>, ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', aborted);
      resolve();
    };
    const aborted = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', aborted, { once: true });
    void woken.then(done);
  });
}
