// A connected console from its first byte to its end. `end()` is the only way a live console's
// browser side is closed: the pumps report why they stopped through it, and Consoles calls it for
// session stop, drain, idle and duration limits and unanswered pings. The first reason wins; once
// both connections are closed the console is counted and logged once (reportClose), and what it
// held (its limits, its registry row) is let go.
//
// One object per console, its behaviour on the prototype: thousands of consoles sit idle, and a
// suspended async function or a closure per method would cost each of them its own frame.
import type { Logger } from 'pino';
import type { ErrorCode } from '../errors.js';
import type { Metrics } from '../ops/metrics.js';
import type { Consoles, LiveConsole } from './consoles.js';
import { closeFrameOf, reportClose, type EndReason } from './endings.js';
import type { OnStop, Pump } from './pump.js';

export interface LiveDeps {
  consoles: Consoles;
  metrics: Metrics;
  /** The gateway's logger; each line about the console carries its ids and client address. */
  log: Logger;
}

export interface LiveOptions {
  sessionId: string;
  /** The registry id and view-only flag, for takeover (live-registry.ts). */
  consoleId: string;
  viewOnly?: boolean;
  /** The browser's address, for the log lines. */
  clientAddress: string;
  /** The session's protocol, for the log line. */
  kind: 'vnc' | 'websockify';
  /** Starts the pump; it reports why it stopped through `onStop`. */
  start(onStop: OnStop): Pump;
  /** Called once each, after the end is reported: what the console held (limits, registry row). */
  letGo: (() => unknown)[];
}

const BROWSER_CLOSED: EndReason = { code: 'BROWSER_CLOSED', message: 'the browser closed the console' };

/** Starts a console that runs on its own until both connections are closed. */
export function startLiveConsole(deps: LiveDeps, options: LiveOptions): LiveConsole {
  return new Live(deps, options);
}

class Live implements LiveConsole {
  readonly id: string;
  readonly sessionId: string;
  readonly viewOnly: boolean | undefined;
  readonly startedAt = Date.now();
  private readonly clientAddress: string;
  private readonly kind: LiveOptions['kind'];
  private readonly letGo: (() => unknown)[];
  private readonly pump: Pump;
  private ending: EndReason | undefined;

  constructor(
    private readonly deps: LiveDeps,
    options: LiveOptions,
  ) {
    this.id = options.consoleId;
    this.sessionId = options.sessionId;
    this.viewOnly = options.viewOnly;
    this.clientAddress = options.clientAddress;
    this.kind = options.kind;
    this.letGo = options.letGo;
    this.pump = options.start((reason) => this.stop(reason));
    deps.consoles.add(this);
    deps.metrics.upgrades.inc({ outcome: 'connected' });
    deps.metrics.consolesActive.inc();
    this.log().info({ kind: this.kind }, 'console connected');
    const finished = () => this.finished();
    void this.pump.done.then(finished, finished);
  }

  get lastActivity(): number {
    return this.pump.stats.lastActivity;
  }

  end(code: ErrorCode, message: string): void {
    this.stop({ code, message });
  }

  heartbeat(): boolean {
    return this.pump.heartbeat();
  }

  /**
   * A logger made for each line rather than kept: a child logger's serialized fields would cost
   * every idle console about half a KiB, and a console logs twice in its life.
   */
  private log(): Logger {
    return this.deps.log.child({ consoleId: this.id, clientAddress: this.clientAddress, sessionId: this.sessionId });
  }

  private stop(reason: EndReason): void {
    if (this.ending !== undefined) return;
    this.ending = reason;
    const frame = closeFrameOf(reason);
    this.pump.close(frame.code, frame.reason);
  }

  /** Both connections are closed: counted, logged once, and what the console held let go. */
  private finished(): void {
    const { consoles, metrics } = this.deps;
    try {
      consoles.delete(this);
      metrics.consolesActive.dec();
      const seconds = (Date.now() - this.startedAt) / 1000;
      metrics.consoleSeconds.observe(seconds);
      const { down, up } = this.pump.stats;
      reportClose(metrics, this.log(), 'console ended', this.ending ?? BROWSER_CLOSED, { kind: this.kind, seconds, bytesDown: down, bytesUp: up });
    } catch (error) {
      this.log().error({ err: error }, 'console ended unexpectedly');
    } finally {
      for (const release of this.letGo.splice(0)) release();
    }
  }
}
