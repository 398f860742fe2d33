// A connected console from its first byte to its end. `end()` is the only way a live console's
// browser side is closed: the pumps report why they stopped through it, and Consoles calls it for
// session stop, drain, idle and duration limits and unanswered pings. The first reason wins; once
// both connections are closed the console is counted and logged once (reportClose).
import type { Logger } from 'pino';
import type { ErrorCode } from '../errors.js';
import type { Metrics } from '../ops/metrics.js';
import type { Consoles, LiveConsole } from './consoles.js';
import { closeFrameOf, reportClose, type EndReason } from './endings.js';
import type { OnStop, Pump } from './pump.js';

export interface LiveDeps {
  consoles: Consoles;
  metrics: Metrics;
}

export interface LiveOptions {
  sessionId: string;
  /** The registry id and view-only flag, for takeover (live-registry.ts). */
  consoleId?: string;
  viewOnly?: boolean;
  /** The session's protocol, for the log line. */
  kind: 'vnc' | 'websockify';
  /** Starts the pump; it reports why it stopped through `onStop`. */
  start(onStop: OnStop): Pump;
}

const BROWSER_CLOSED: EndReason = { code: 'BROWSER_CLOSED', message: 'the browser closed the console' };

/** Runs a console until both connections are closed. */
export async function runLiveConsole(deps: LiveDeps, log: Logger, options: LiveOptions): Promise<void> {
  const { consoles, metrics } = deps;
  let ending: EndReason | undefined;
  let pump: Pump | undefined;
  const end = (reason: EndReason) => {
    if (ending !== undefined) return;
    ending = reason;
    const frame = closeFrameOf(reason);
    pump?.close(frame.code, frame.reason);
  };
  pump = options.start(end);
  const stats = pump.stats;
  const live: LiveConsole = {
    id: options.consoleId,
    sessionId: options.sessionId,
    viewOnly: options.viewOnly,
    startedAt: Date.now(),
    get lastActivity() {
      return stats.lastActivity;
    },
    end: (code: ErrorCode, message: string) => end({ code, message }),
    heartbeat: () => pump.heartbeat(),
  };
  consoles.add(live);
  metrics.upgrades.inc({ outcome: 'connected' });
  metrics.consolesActive.inc();
  log.info({ kind: options.kind }, 'console connected');
  try {
    await pump.done;
  } finally {
    consoles.delete(live);
    metrics.consolesActive.dec();
    const seconds = (Date.now() - live.startedAt) / 1000;
    metrics.consoleSeconds.observe(seconds);
    reportClose(metrics, log, 'console ended', ending ?? BROWSER_CLOSED, { kind: options.kind, seconds, bytesDown: stats.down, bytesUp: stats.up });
  }
}
