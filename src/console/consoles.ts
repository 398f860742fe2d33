// The consoles this process is serving: piping ones (for session stop, idle and duration limits,
// drain) and waiting ones (so drain can refuse them at once). One sweep timer serves them all, so
// an idle console costs no timer of its own.
import type { ErrorCode } from '../errors.js';
import type { SessionEvents } from '../db/events.js';

export interface LiveConsole {
  /** The console's id in the live-console registry (takeover spares the exclusive one itself). */
  readonly id?: string | undefined;
  readonly sessionId: string;
  /** View-only consoles survive a takeover. */
  readonly viewOnly?: boolean | undefined;
  readonly startedAt: number;
  /** Date.now() of the last chunk either way (kept by the pump). */
  readonly lastActivity: number;
  /**
   * Ends the console: the browser is sent a close frame with `code`'s close code from the error
   * catalogue and `message` as its reason (for websockify pass-through too), the VM connection is
   * closed, and the end is counted and logged once. Idempotent: the first reason wins.
   */
  end(code: ErrorCode, message: string): void;
  /** Sends a WebSocket ping; returns false when the previous ping went unanswered. */
  heartbeat?(): boolean;
}

export interface ConsoleLimits {
  idleTimeoutMs: number;
  maxDurationMs: number;
  heartbeatMs: number;
}

export class Consoles {
  readonly live = new Set<LiveConsole>();
  readonly waiting = new Set<AbortController>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly onChange = (id: string, status: string) => {
    if (status === 'stopped') this.closeSession(id, 'the console session was stopped');
    else if (status === 'failed') this.closeSession(id, 'the console session failed');
  };

  constructor(
    private readonly events: SessionEvents,
    private readonly limits: ConsoleLimits,
  ) {
    events.on('change', this.onChange);
    const every = Math.max(250, Math.min(limits.heartbeatMs, limits.idleTimeoutMs || Infinity, limits.maxDurationMs || Infinity) / 4);
    this.sweeper = setInterval(() => this.sweep(), every);
    this.sweeper.unref();
  }

  get size(): number {
    return this.live.size + this.waiting.size;
  }

  add(console: LiveConsole): void {
    this.live.add(console);
  }

  delete(console: LiveConsole): void {
    this.live.delete(console);
  }

  /** Closes this process's consoles of one session (the session was stopped or failed). */
  closeSession(sessionId: string, message: string): number {
    let closed = 0;
    for (const c of this.live) {
      if (c.sessionId === sessionId) {
        c.end('SESSION_ENDED', message);
        closed++;
      }
    }
    return closed;
  }

  /** Aborts every waiting upgrade with `reason` (drain). */
  abortWaiting(reason: Error): void {
    for (const controller of this.waiting) controller.abort(reason);
  }

  /** Ends every live console of this process (drain). */
  closeAll(code: ErrorCode, message: string): void {
    for (const c of this.live) c.end(code, message);
  }

  private lastHeartbeat = Date.now();

  private sweep(): void {
    const now = Date.now();
    const { idleTimeoutMs, maxDurationMs, heartbeatMs } = this.limits;
    const beat = now - this.lastHeartbeat >= heartbeatMs;
    if (beat) this.lastHeartbeat = now;
    for (const c of this.live) {
      if (maxDurationMs > 0 && now - c.startedAt >= maxDurationMs) {
        c.end('MAX_DURATION', `maximum console duration of ${Math.round(maxDurationMs / 1000)} s reached`);
      } else if (idleTimeoutMs > 0 && now - c.lastActivity >= idleTimeoutMs) {
        c.end('IDLE_TIMEOUT', `console idle for ${Math.round(idleTimeoutMs / 1000)} s`);
      } else if (beat && c.heartbeat?.() === false) {
        c.end('BROWSER_UNRESPONSIVE', 'the browser stopped answering pings');
      }
    }
  }

  stop(): void {
    clearInterval(this.sweeper);
    this.events.off('change', this.onChange);
  }
}
