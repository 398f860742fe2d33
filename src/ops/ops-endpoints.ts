// /healthz, /readyz and /metrics: served by `serve` on its own port and by `gate` and `reconcile`
// on OPS_PORT (ops-server.ts), so probes and scrapes read the same answers everywhere.
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Store } from '../db/open.js';
import type { Metrics } from './metrics.js';

export interface OpsDeps {
  store: Store;
  metrics: Metrics;
  /** METRICS_TOKEN: required as a bearer token on /metrics when set. */
  metricsToken: string | undefined;
  /** Draining processes answer 503 on /readyz so balancers stop sending new work. */
  isDraining?(): boolean;
}

const READY_PING_TIMEOUT_MS = 2_000;

/** Answers the three ops paths; false for any other path. */
export async function handleOps(deps: OpsDeps, req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> {
  if (path === '/healthz') return send(res, 200, { status: 'ok' });
  if (path === '/readyz') return send(res, ...(await readiness(deps)));
  if (path !== '/metrics') return false;
  if (deps.metricsToken !== undefined && !bearerMatches(req.headers.authorization, deps.metricsToken)) {
    res.writeHead(401, { 'Content-Type': 'text/plain', 'WWW-Authenticate': 'Bearer realm="metrics"' }).end('metrics need the bearer token (METRICS_TOKEN)\n');
    return true;
  }
  res.writeHead(200, { 'Content-Type': deps.metrics.registry.contentType });
  res.end(await deps.metrics.registry.metrics());
  return true;
}

/** Ready: not draining, the database answers, and (when this process listens) LISTEN is up. */
async function readiness({ store, isDraining }: OpsDeps): Promise<[number, Record<string, unknown>]> {
  if (isDraining?.()) return [503, { status: 'draining' }];
  const listen = store.listenUp();
  try {
    await Promise.race([
      store.ping(),
      new Promise((_, reject) => setTimeout(() => reject(new Error('database ping timed out')), READY_PING_TIMEOUT_MS).unref()),
    ]);
  } catch {
    return [503, { status: 'database unreachable', database: store.kind }];
  }
  // Without LISTEN, waiting consoles and session stops are only noticed by polling: not ready.
  if (listen === false) return [503, { status: 'database LISTEN connection down', database: store.kind, listen: 'down' }];
  return [200, { status: 'ready', database: store.kind, ...(listen === true ? { listen: 'up' } : {}) }];
}

function bearerMatches(header: string | undefined, token: string): boolean {
  const given = Buffer.from(/^Bearer (.+)$/i.exec(header ?? '')?.[1] ?? '');
  const wanted = Buffer.from(token);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function send(res: ServerResponse, status: number, body: unknown): true {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' }).end(text);
  return true;
}
