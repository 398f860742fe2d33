// Prometheus metrics. One registry per gateway instance (tests run several in one process); labels
// are closed sets (outcome codes, directions), never session ids, tickets or addresses.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { createFleetMetrics, type FleetMetrics } from './fleet-metrics.js';

/** Bytes piped, added to by the pump per chunk and read by the bytes counter at scrape time. */
export interface Traffic {
  down: number;
  up: number;
}

export interface Metrics {
  readonly registry: Registry;
  readonly traffic: Traffic;
  readonly upgrades: Counter<'outcome'>;
  readonly consolesActive: Gauge;
  readonly consolesWaiting: Gauge;
  readonly bytes: Counter<'direction'>;
  readonly waitSeconds: Histogram;
  readonly consoleSeconds: Histogram;
  readonly closes: Counter<'code'>;
  readonly probes: Counter<'result'>;
  readonly sessionTransitions: Counter<'to'>;
  readonly refusals: Counter<'cap'>;
  readonly upgradePhaseSeconds: Histogram<'phase'>;
  readonly probeSeconds: Histogram<'result'>;
  readonly probeFailures: Counter<'kind'>;
  /** The reconciler and the port pool. */
  readonly fleet: FleetMetrics;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'console_gateway_' });
  const registers = [registry];
  // A labelled prom-client inc hashes its labels on every call; per chunk of console traffic that
  // is measurable (bench/), so the pump adds to plain numbers and the counter catches up on scrape.
  const traffic: Traffic = { down: 0, up: 0 };
  const reported: Traffic = { down: 0, up: 0 };
  return {
    registry,
    traffic,
    upgrades: new Counter({
      name: 'console_gateway_upgrades_total',
      help: 'Console WebSocket upgrades by outcome (connected or the error code that refused them)',
      labelNames: ['outcome'],
      registers,
    }),
    consolesActive: new Gauge({ name: 'console_gateway_consoles_active', help: 'Consoles currently piping bytes', registers }),
    consolesWaiting: new Gauge({
      name: 'console_gateway_consoles_waiting',
      help: 'Upgrades waiting for their session to become ready',
      registers,
    }),
    bytes: new Counter({
      name: 'console_gateway_bytes_total',
      help: 'Bytes piped: down = VM to browser, up = browser to VM',
      labelNames: ['direction'],
      registers,
      collect() {
        for (const direction of ['down', 'up'] as const) {
          this.inc({ direction }, traffic[direction] - reported[direction]);
          reported[direction] = traffic[direction];
        }
      },
    }),
    waitSeconds: new Histogram({
      name: 'console_gateway_wait_seconds',
      help: 'Time an upgrade waited for its session to become ready',
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 25, 60],
      registers,
    }),
    consoleSeconds: new Histogram({
      name: 'console_gateway_console_duration_seconds',
      help: 'Lifetime of connected consoles',
      buckets: [1, 10, 60, 300, 900, 3600, 14400],
      registers,
    }),
    closes: new Counter({
      name: 'console_gateway_closes_total',
      help: 'Console WebSockets ended or refused, by the close code the browser was sent (1000 when the browser closed)',
      labelNames: ['code'],
      registers,
    }),
    probes: new Counter({
      name: 'console_gateway_probes_total',
      help: 'Readiness probe attempts by result',
      labelNames: ['result'],
      registers,
    }),
    sessionTransitions: new Counter({
      name: 'console_gateway_session_transitions_total',
      help: 'Session status transitions made by this process',
      labelNames: ['to'],
      registers,
    }),
    refusals: new Counter({
      name: 'console_gateway_refusals_total',
      help: 'Upgrades refused by a cap or the failed-upgrade throttle, by cap',
      labelNames: ['cap'],
      registers,
    }),
    upgradePhaseSeconds: new Histogram({
      name: 'console_gateway_upgrade_phase_duration_seconds',
      help: 'Time an upgrade spent in each phase: ticket (verify), database (consume + read), wait (for ready), dial (resolve + connect)',
      labelNames: ['phase'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25],
      registers,
    }),
    probeSeconds: new Histogram({
      name: 'console_gateway_probe_duration_seconds',
      help: 'Duration of readiness probe attempts by result (ok, failed)',
      labelNames: ['result'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    probeFailures: new Counter({
      name: 'console_gateway_probe_failures_total',
      help: 'Failed readiness probe attempts by kind: tcp, banner, http, websocket, outside_cidrs',
      labelNames: ['kind'],
      registers,
    }),
    fleet: createFleetMetrics(registers),
  };
}
