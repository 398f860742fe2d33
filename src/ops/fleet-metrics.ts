// Metrics of the fleet's lifecycle: the reconciler (runs, duration, found/cleaned/failed per rule,
// last success) and the port pool (allocated and free read from the database at scrape time, so
// every replica reports the shared pool; exhaustion counted where it happened). Labels are the
// closed set of rule names and results.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { PoolStats } from '../db/ports.js';

export interface FleetMetrics {
  readonly reconcilerRuns: Counter<'result'>;
  readonly reconcilerDuration: Histogram;
  readonly reconcilerFound: Counter<'rule'>;
  readonly reconcilerCleaned: Counter<'rule'>;
  readonly reconcilerFailures: Counter<'rule'>;
  readonly reconcilerLastSuccess: Gauge;
  readonly portsExhausted: Counter;
  /** Where the pool gauges read at scrape time; unset, they stay at zero. */
  observePool(read: () => Promise<PoolStats>): void;
}

export function createFleetMetrics(registers: Registry[]): FleetMetrics {
  let read: (() => Promise<PoolStats>) | undefined;
  // The two gauges are collected together in one scrape: one query in flight serves both.
  let inFlight: Promise<PoolStats | undefined> | undefined;
  const stats = (): Promise<PoolStats | undefined> => {
    if (read === undefined) return Promise.resolve(undefined);
    // A database hiccup must not fail the whole scrape: the gauges keep their last value.
    inFlight ??= read()
      .catch(() => undefined)
      .finally(() => (inFlight = undefined));
    return inFlight;
  };
  const poolGauge = (name: string, help: string, field: 'allocated' | 'free') =>
    new Gauge({
      name,
      help,
      registers,
      async collect() {
        const s = await stats();
        if (s !== undefined) this.set(s[field]);
      },
    });
  poolGauge('console_gateway_ports_allocated', 'Pool ports under an unexpired lease of a live session', 'allocated');
  poolGauge('console_gateway_ports_free', 'Pool ports free to lease', 'free');
  return {
    reconcilerRuns: new Counter({
      name: 'console_gateway_reconciler_runs_total',
      help: 'Reconciler passes by result: ok, failed (an action failed), skipped (another reconciler held the lock)',
      labelNames: ['result'],
      registers,
    }),
    reconcilerDuration: new Histogram({
      name: 'console_gateway_reconciler_duration_seconds',
      help: 'Duration of reconciler passes this process led',
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300],
      registers,
    }),
    reconcilerFound: new Counter({ name: 'console_gateway_reconciler_found_total', help: 'Things a reconciler rule found to act on', labelNames: ['rule'], registers }),
    reconcilerCleaned: new Counter({ name: 'console_gateway_reconciler_cleaned_total', help: 'Actions a reconciler rule carried out', labelNames: ['rule'], registers }),
    reconcilerFailures: new Counter({ name: 'console_gateway_reconciler_failures_total', help: 'Actions a reconciler rule attempted that failed', labelNames: ['rule'], registers }),
    reconcilerLastSuccess: new Gauge({
      name: 'console_gateway_reconciler_last_success_timestamp_seconds',
      help: 'When this process last completed a reconciler pass with no failed action (Unix time)',
      registers,
    }),
    portsExhausted: new Counter({ name: 'console_gateway_ports_exhausted_total', help: 'Port allocations refused because the pool was full', registers }),
    observePool(source) {
      read = source;
    },
  };
}
