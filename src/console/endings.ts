// How a console's WebSocket ends, in one vocabulary: an end reason names an error-catalogue code
// and a message a person can act on. The close code the browser gets, the
// `console_gateway_closes_total{code}` label and the log line are all derived here, for refused
// upgrades and for live consoles of both kinds, so the three can never disagree.
import type { Logger } from 'pino';
import { CATALOGUE, closeReason, type ErrorCode } from '../errors.js';
import type { Metrics } from '../ops/metrics.js';

export interface EndReason {
  readonly code: ErrorCode;
  /** Shown to the person at the console (the close reason): no ticket, token or secret. */
  readonly message: string;
  /**
   * The close code actually sent when it is not the catalogue's: a websockify target's own close
   * frame, forwarded to the browser unchanged.
   */
  readonly closeCode?: number;
}

/** The close code and reason (≤ 123 bytes) the browser is sent for `reason`. */
export function closeFrameOf(reason: EndReason): { code: number; reason: string } {
  return { code: reason.closeCode ?? CATALOGUE[reason.code].close, reason: closeReason(reason.message) };
}

/**
 * Counts one browser close by its code and writes the one log line about it. `fields` adds what
 * the caller knows (duration, bytes, a cause for errors); `what` prefixes the message.
 */
export function reportClose(metrics: Metrics, log: Logger, what: string, reason: EndReason, fields: Record<string, unknown> = {}): void {
  const { code } = closeFrameOf(reason);
  metrics.closes.inc({ code: String(code) });
  log[CATALOGUE[reason.code].level]({ code: reason.code, closeCode: code, ...fields }, `${what}: ${reason.message}`);
}
