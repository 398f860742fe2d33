// The port pool's operations, shared by the HTTP API, the CLI and the admin socket: allocate (or
// renew) a lease, release it, and the pool's stats with its allocations.
import { hostname } from 'node:os';
import type { Kysely } from 'kysely';
import type { Config } from '../config.js';
import { actorName } from '../db/audit.js';
import { allocatePort, listAllocations, listConflicts, poolStats, releasePort, type Allocation, type PoolOptions, type PoolStats, type PortConflict } from '../db/ports.js';
import type { Database } from '../db/schema.js';
import { GatewayError } from '../errors.js';
import { canBind } from '../fleet/bind-check.js';
import type { FleetMetrics } from '../ops/fleet-metrics.js';
import { requireId } from './control.js';

export interface PortDeps {
  config: Config;
  db: Kysely<Database>;
  fleetMetrics?: FleetMetrics;
}

export interface LeaseView {
  port: number;
  leaseExpiresAt: string;
}

export interface PoolView extends PoolStats {
  allocations?: Allocation[];
  /** Ports the bind check found held by other programs, by host, in the last hour. */
  conflicts?: PortConflict[];
}

export function poolOf(config: Config): PoolOptions {
  return { start: config.portRangeStart, end: config.portRangeEnd, maxSessions: config.maxSessions, leaseSeconds: config.portLeaseSeconds };
}

/** Leases a port to the session (`created`) or renews its lease; PORTS_EXHAUSTED is counted. */
export async function allocatePortOp(deps: PortDeps, id: string): Promise<{ lease: LeaseView; created: boolean }> {
  const sessionId = requireId(id);
  try {
    const lease = await allocatePort(deps.db, sessionId, {
      ...poolOf(deps.config),
      actor: actorName('pool'),
      ...(deps.config.portBindCheck ? { isFree: (port: number) => canBind(port), host: hostname() } : {}),
    });
    return { lease: { port: lease.port, leaseExpiresAt: lease.leaseExpiresAt.toISOString() }, created: !lease.renewed };
  } catch (error) {
    if (error instanceof GatewayError && error.code === 'PORTS_EXHAUSTED') deps.fleetMetrics?.portsExhausted.inc();
    throw error;
  }
}

export async function releasePortOp(deps: PortDeps, id: string): Promise<{ released: boolean }> {
  return { released: await releasePort(deps.db, requireId(id)) };
}

export async function poolOp(deps: PortDeps, list: boolean): Promise<PoolView> {
  const stats = await poolStats(deps.db, poolOf(deps.config));
  if (!list) return stats;
  return { ...stats, allocations: await listAllocations(deps.db), conflicts: await listConflicts(deps.db) };
}
