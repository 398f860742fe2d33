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
import { runtimeHookFromConfig, type RuntimeHook } from './fleet/runtime-hook.js';
import { runPass, startReconciler, type Reconciler } from './fleet/reconciler.js';
import { startAdminSocket, type AdminSocket } from './control/admin-socket.js';
import type { FleetMetrics } from './ops/fleet-metrics.js';
import { claimMsFor, cleanupSession } from './fleet/cleanup.js';
import { actorName } from './db/audit.js';
import type { ControlDeps } from './control/control.js';
import type { OperatorDeps } from './control/operator-commands.js';

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
  /** What the control operations need, for in-process callers (the demo, the admin socket). */
  readonly control: ControlDeps;
  /** The in-process reconciler; undefined with RECONCILIATION_ENABLED=false. */
  readonly reconciler: Reconciler | undefined;
  stop(): Promise<void>;
}

const PURGE_INTERVAL_MS = 5 * 60_000;

export interface Sidecar {
  /** The OPS_PORT endpoints (/healthz, /readyz, /metrics). */
  readonly ops: OpsServer;
  readonly metrics: Metrics;
  stop(): Promise<void>;
}

/**
 * Opens the database of a sidecar command and serves its /healthz, /readyz and /metrics on
 * OPS_PORT; the store is closed again when the ops server cannot start.
 */
async function openSidecar(config: Config, log: Logger, listen: boolean): Promise<{ store: Store; metrics: Metrics; ops: OpsServer }> {
  const store = await openDatabase(config, log, listen);
  const metrics = createMetrics();
  observeStore(metrics, store);
  try {
    const ops = await startOpsServer({ store, metrics, metricsToken: config.edge.metricsToken, host: config.host, port: config.edge.opsPort, log });
    return { store, metrics, ops };
  } catch (error) {
    await store.close();
    throw error;
  }
}

/** `gate`: the readiness gate alone (the sidecar form), with its ops endpoints. */
export async function startGateOnly(config: Config, log: Logger): Promise<Sidecar> {
  const { store, metrics, ops } = await openSidecar(config, log, true);
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

/**
 * `reconcile`: the reconciler alone, a pass every RECONCILIATION_INTERVAL seconds, with its ops
 * endpoints. The reconciler's `ready` resolves after the first pass.
 */
export async function startReconcileOnly(config: Config, log: Logger, dryRun = false): Promise<Sidecar & { reconciler: Reconciler }> {
  const { store, metrics, ops } = await openSidecar(config, log, false);
  metrics.fleet.observePool(() => poolStats(store.db, poolOf(config)));
  const hook = runtimeHookFromConfig(config, log);
  const reconciler = startReconciler({ db: store.db, kind: store.kind, config, log, metrics: metrics.fleet, ...(hook ? { hook } : {}) }, config.reconciliationIntervalSeconds * 1000, { dryRun });
  return {
    ops,
    metrics,
    reconciler,
    async stop() {
      await reconciler.stop();
      await ops.close();
      await store.close();
    },
  };
}

/**
 * The reconciler every RECONCILIATION_INTERVAL seconds; with it disabled, consumed tickets are
 * still forgotten an hour after they expire.
 */
function startHousekeeping(
  config: Config,
  store: Store,
  log: Logger,
  extra: { metrics: FleetMetrics; hook?: RuntimeHook },
): { reconciler: Reconciler | undefined; stop(): Promise<void> } {
  if (config.reconciliationEnabled) {
    const reconciler = startReconciler({ db: store.db, kind: store.kind, config, log, ...extra }, config.reconciliationIntervalSeconds * 1000);
    return { reconciler, stop: () => reconciler.stop() };
  }
  const purge = setInterval(() => {
    purgeConsumedTickets(store.db, 3600).catch((error) => log.warn({ err: error }, 'purging consumed tickets failed'));
  }, PURGE_INTERVAL_MS);
  purge.unref();
  return { reconciler: undefined, stop: async () => clearInterval(purge) };
}

/**
 * The admin socket beside the embedded database. A data directory whose path is too long for a
 * unix socket (about 100 bytes) leaves the gateway without it, with a warning, rather than down.
 */
async function openAdminSocket(config: Config, log: Logger, deps: OperatorDeps): Promise<AdminSocket | undefined> {
  try {
    return await startAdminSocket(config.dataDir, deps, log);
  } catch (error) {
    log.warn({ err: error, dataDir: config.dataDir }, 'admin socket could not be opened; operator commands cannot reach this gateway');
    return undefined;
  }
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
    const cleanupDeps = { db: store.db, log, actor: actorName('api'), claimMs: claimMsFor(config.runtimeHookTimeoutSeconds), ...(hook ? { hook } : {}) };
    const cleanup = (id: string, reason?: string) => cleanupSession(cleanupDeps, id, reason);
    const gateway = await startGateway({ config, store, tickets, metrics, log, cleanup });
    // With gating off there is nothing to probe, but targets committed by plain SQL still need
    // promoting to ready, by the gateway itself whether or not a gate sidecar runs.
    const gate = config.gateEnabled || !config.readyGatingEnabled ? startGate({ db: store.db, events: store.events, log, metrics, config, ...(hook ? { hook } : {}) }) : undefined;
    const housekeeping = startHousekeeping(config, store, log, { metrics: metrics.fleet, ...(hook ? { hook } : {}) });
    const control = { config, db: store.db, tickets, cleanup, fleetMetrics: metrics.fleet };
    const admin = store.kind === 'embedded' ? await openAdminSocket(config, log, {
      control,
      ...(hook ? { hook } : {}),
      publicUrl: config.publicUrl ?? gateway.url,
      reconcile: (dryRun) => housekeeping.reconciler?.runOnce({ dryRun }) ?? runPass({ db: store.db, kind: store.kind, config, log, ...(hook ? { hook } : {}) }, { dryRun }),
    }) : undefined;
    let stopping: Promise<void> | undefined;
    return {
      gateway,
      store,
      metrics,
      tickets,
      control,
      reconciler: housekeeping.reconciler,
      stop: () =>
        (stopping ??= (async () => {
          // The drain starts at once (readyz 503, new consoles refused) while the sidecars finish
          // their current pass; the database closes after all of them.
          const drained = gateway.close();
          await admin?.close();
          await housekeeping.stop();
          await gate?.stop();
          await drained;
          await store.close();
        })()),
    };
  } catch (error) {
    await store.close();
    throw error;
  }
}
