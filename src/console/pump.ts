// What a byte pump (raw VNC in bridge.ts, WebSocket pass-through in pass-through.ts) offers the
// live console that owns it. A pump never decides how a console ends: it reports why it stopped
// (`onStop`) and closes when told to (`close`), so the code, the metric and the log line are
// decided in one place (live-console.ts).
import type { EndReason } from './endings.js';

export interface PumpStats {
  /** Bytes VM → browser and browser → VM, as received (before any view-only filtering). */
  down: number;
  up: number;
  /** Date.now() of the last chunk either way, for the idle limit. */
  lastActivity: number;
}

export interface Pump {
  readonly stats: PumpStats;
  /**
   * Sends the browser a close frame with `code` and `reason` (≤ 123 bytes) and ends the VM side;
   * idempotent. The browser's answer is awaited briefly before its connection is closed.
   */
  close(code: number, reason: string): void;
  /** Pings the browser; false when the previous ping went unanswered. */
  heartbeat(): boolean;
  /** Resolves once both connections are closed. */
  readonly done: Promise<void>;
}

/** Called by a pump, never synchronously from its constructor, with why it stopped on its own. */
export type OnStop = (reason: EndReason) => void;
