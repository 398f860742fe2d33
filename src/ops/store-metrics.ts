// The database connection's state as gauges, read at scrape time: the pool's connections (total,
// idle, queries waiting for one) and whether the LISTEN connection is up.
import { Gauge } from 'prom-client';
import type { Store } from '../db/open.js';
import type { Metrics } from './metrics.js';

/** Registers the store's gauges on `metrics.registry` (once per registry). */
export function observeStore(metrics: Pick<Metrics, 'registry'>, store: Store): void {
  const registers = [metrics.registry];
  new Gauge({
    name: 'console_gateway_db_pool_connections',
    help: 'PostgreSQL pool connections by state: total, idle, and waiting (queries queued for a connection)',
    labelNames: ['state'],
    registers,
    collect() {
      const stats = store.poolStats();
      if (stats === undefined) return;
      for (const state of ['total', 'idle', 'waiting'] as const) this.set({ state }, stats[state]);
    },
  });
  new Gauge({
    name: 'console_gateway_db_listen_up',
    help: '1 while the database LISTEN connection (session changes, console stops) is up, 0 while it is re-established',
    registers,
    collect() {
      const up = store.listenUp();
      if (up !== undefined) this.set(up ? 1 : 0);
    },
  });
}
