// The composition root: turns a Config into running parts (store, tickets, metrics, gateway, gate),
// each handed its dependencies as arguments, and stops them in reverse order.
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { migrateToLatest } from './db/migrations.js';
import { openStore, type Store } from './db/open.js';
import { purgeConsumedTickets } from './db/tickets.js';
import { poolStats } from './db/ports.js';
import { poolOf } from './control/port-ops.js';
import { createMetrics, type Metrics } from './ops/metrics.js';
import { startOpsServer, type OpsServer } from './ops/ops-server.js';
import { observeStore } from './ops/store-metrics.js';
import { startGateway, type Gateway } from './console/server.js';
import { Tickets, readJwksFile } from './console/ticket.js';
import { startGate } from './fleet/gate.js';
import { createTeardown, runtimeHookFromConfig } from './fleet/runtime-hook.js';

/** Opens the database (migrating it unless MIGRATE_ON_START=false) for a command. */
export async function openDatabase(config: Config, log: Logger, listen = false): Promise<Store> {
  const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log, listen });
  if (config.migrateOnStart) {
    try {
      await migrateToLatest(store.db);
    } catch (error) {
      await store.close();
      throw error;
    }
  }
  return store;
}

export async function createTickets(config: Config, store: Store): Promise<Tickets> {
  const jwks = config.ticketJwksFile === undefined ? undefined : await readJwksFile(config.ticketJwksFile);
  return new Tickets(
    {
      secret: config.ticketSecret,
      jwks,
      audience: config.ticketAudience,
      issuers: config.ticketIssuers,
      maxTtlSeconds: config.ticketMaxTtlSeconds,
    },
    store.db,
  );
}

export interface Running {
  readonly gateway: Gateway;
  readonly store: Store;
  readonly metrics: Metrics;
  readonly tickets: Tickets;
  stop(): Promise<void>;
}

const PURGE_INTERVAL_MS = 5 * 60_000;

export interface Sidecar {
  /** The OPS_PORT endpoints (/healthz, /readyz, /metrics). */
  readonly ops: OpsServer;
  readonly metrics: Metrics;
  stop(): Promise<void>;
}

/** Serves /healthz, /readyz and /metrics of a sidecar command on OPS_PORT. */
function startSidecarOps(config: Config, log: Logger, store: Store, metrics: Metrics): Promise<OpsServer> {
  observeStore(metrics, store);
  return startOpsServer({ store, metrics, metricsToken: config.edge.metricsToken, host: config.host, port: config.edge.opsPort, log });
}

/** `gate`: the readiness gate alone (the sidecar form), with its ops endpoints. */
export async function startGateOnly(config: Config, log: Logger): Promise<Sidecar> {
  const store = await openDatabase(config, log, true);
  const metrics = createMetrics();
  let ops: OpsServer;
  try {
    ops = await startSidecarOps(config, log, store, metrics);
  } catch (error) {
    await store.close();
    throw error;
  }
  const hook = runtimeHookFromConfig(config, log);
  const gate = startGate({ db: store.db, events: store.events, log, metrics, config, ...(hook ? { hook } : {}) });
  return {
    ops,
    metrics,
    async stop() {
      await gate.stop();
      await ops.close();
      await store.close();
    },
  };
}

/** `serve`: the gateway plus its in-process workers. */
export async function startServe(config: Config, log: Logger): Promise<Running> {
  const store = await openDatabase(config, log, true);
  try {
    const tickets = await createTickets(config, store);
    const metrics = createMetrics();
    metrics.fleet.observePool(() => poolStats(store.db, poolOf(config)));
    observeStore(metrics, store);
    const hook = runtimeHookFromConfig(config, log);
    const teardown = hook === undefined ? undefined : createTeardown(hook, log);
    const gateway = await startGateway({ config, store, tickets, metrics, log, ...(teardown ? { teardown } : {}) });
    // With gating off there is nothing to probe, but targets committed by plain SQL still need
    // promoting to ready, by the gateway itself whether or not a gate sidecar runs.
    const gate = config.gateEnabled || !config.readyGatingEnabled ? startGate({ db: store.db, events: store.events, log, metrics, config, ...(hook ? { hook } : {}) }) : undefined;
    const purge = setInterval(() => {
      purgeConsumedTickets(store.db).catch((error) => log.warn({ err: error }, 'purging consumed tickets failed'));
    }, PURGE_INTERVAL_MS);
    purge.unref();
    let stopping: Promise<void> | undefined;
    return {
      gateway,
      store,
      metrics,
      tickets,
      stop: () =>
        (stopping ??= (async () => {
          clearInterval(purge);
          await gate?.stop();
          await gateway.close();
          await store.close();
        })()),
    };
  } catch (error) {
    await store.close();
    throw error;
  }
}
