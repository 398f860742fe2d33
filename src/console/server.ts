// The HTTP server: routes, the console upgrade, health and drain. Everything it starts stops in
// close(); tests and SIGTERM use the same path.
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import type { Config } from '../config.js';
import { ConsoleWebSocket, MAX_BROWSER_MESSAGE_BYTES } from './browser-frames.js';
import { Consoles } from './consoles.js';
import { LiveRegistry } from './live-registry.js';
import { pageConfigOf } from './page-config.js';
import { Screenshots } from '../control/screenshot.js';
import { handleApi, sendJson } from '../control/control-api.js';
import type { Store } from '../db/open.js';
import type { CleanupOutcome } from '../fleet/cleanup.js';
import { GatewayError, toGatewayError } from '../errors.js';
import type { Metrics } from '../ops/metrics.js';
import { createWsProxy } from './proxy-upgrade.js';
import { serveStatic } from './static.js';
import { consolePageHeaders } from './page-policy.js';
import { handleOps } from '../ops/ops-endpoints.js';
import type { Tickets } from './ticket.js';
import { clientErrorAnswer, selectProtocol, writeHttpError } from './handshake.js';
import { createUpgradeHandler } from './upgrade.js';
import { createLimits } from './limits.js';
import { createListener } from './listener.js';

export interface GatewayOptions {
  config: Config;
  store: Store;
  tickets: Tickets;
  metrics: Metrics;
  log: Logger;
  /** Cleans a session the API stopped (teardown hook, port release). */
  cleanup: (id: string, reason?: string) => Promise<CleanupOutcome>;
}

export interface Gateway {
  readonly server: Server;
  readonly consoles: Consoles;
  /** http://host:port the server listens on. */
  readonly url: string;
  readonly draining: boolean;
  /** Drain (readyz 503, refuse new consoles, let live ones run until the deadline), then stop. */
  close(): Promise<void>;
}

const CLOSE_GRACE_MS = 1_000;

/** Starts listening on config.host:config.port (0 = any free port; read `url` for the real one). */
export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  const { config, store, tickets, metrics, log } = options;
  let draining = false;
  const sockets = new Set<Socket>();
  const consoles = new Consoles(store.events, {
    idleTimeoutMs: config.idleTimeoutSeconds * 1000,
    maxDurationMs: config.maxDurationSeconds * 1000,
    heartbeatMs: config.heartbeatSeconds * 1000,
  });
  const wss = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    maxPayload: MAX_BROWSER_MESSAGE_BYTES,
    // VNC encodings are compressed already; deflate would only cost CPU and memory per console.
    perMessageDeflate: false,
    handleProtocols: selectProtocol,
    WebSocket: ConsoleWebSocket,
  });
  const proxy = createWsProxy();
  const pageHeaders = consolePageHeaders(config.edge.frameAncestors);
  const opsDeps = { store, metrics, metricsToken: config.edge.metricsToken, isDraining: () => draining };
  const registry = new LiveRegistry(store.db, store.events, consoles, log);
  const publicUrl = (req: IncomingMessage) => config.publicUrl ?? `http://${req.headers.host ?? `localhost:${config.port}`}`;
  const screenshots = new Screenshots(config, store.db);
  const apiDeps = { config, db: store.db, tickets, publicUrl, screenshots, fleetMetrics: metrics.fleet, cleanup: options.cleanup };

  async function onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    try {
      if (await handleOps(opsDeps, req, res, path)) return;
      if (path.startsWith('/api/v1/')) return await handleApi(apiDeps, req, res, path);
      if (path === '/console/config.json') return sendJson(res, 200, pageConfigOf(config, req));
      if (await serveStatic(req, res, path, pageHeaders)) return;
      if (path === '/websockify') throw new GatewayError('BAD_REQUEST', 'this path only takes WebSocket upgrades');
      throw new GatewayError('NOT_FOUND', 'not found');
    } catch (error) {
      const failure = toGatewayError(error);
      // Only the path: the query may hold a ticket.
      log[failure.level]({ method: req.method, path, code: failure.code, ...(failure.code === 'INTERNAL' || failure.code === 'DATABASE_UNAVAILABLE' ? { err: failure.cause } : {}) }, failure.message);
      if (res.headersSent) return void res.destroy();
      sendJson(res, failure.status, { error: { code: failure.code, message: failure.message } });
    }
  }

  const listener = await createListener(config, log, (req, res) => void onRequest(req, res));
  const server = listener.server;
  // One listener function for every socket: a closure per connection would cost each idle console.
  const forget = function (this: Socket) {
    sockets.delete(this);
  };
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', forget);
  });
  // A malformed, oversized or too slow request: answer what HTTP says and drop it, never crash.
  server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return void socket.destroy();
    const { status, message } = clientErrorAnswer(error);
    // Destroyed once the answer is out: the listener is half-open, so a client that never closes
    // its side (a slow-header attacker) would otherwise keep the socket.
    socket.once('finish', () => socket.destroy());
    writeHttpError(socket, status, message);
  });
  server.on(
    'upgrade',
    createUpgradeHandler({ config, store, tickets, consoles, metrics, log, wss, proxy, registry, limits: createLimits(config, metrics, log), isDraining: () => draining }),
  );
  const address = await listener.listen();
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `${listener.secure ? 'https' : 'http'}://${host === '0.0.0.0' || host === '[::]' ? 'localhost' : host}:${address.port}`;
  log.info({ url, database: store.kind, gating: config.readyGatingEnabled, tls: listener.secure, proxyProtocol: config.edge.proxyProtocol }, 'gateway listening');

  let closing: Promise<void> | undefined;
  async function drainAndClose(): Promise<void> {
    draining = true;
    log.info({ live: consoles.live.size, waiting: consoles.waiting.size, drainSeconds: config.drainTimeoutSeconds }, 'draining');
    consoles.abortWaiting(new GatewayError('SHUTTING_DOWN', 'the gateway is shutting down; reconnect'));
    const deadline = Date.now() + config.drainTimeoutSeconds * 1000;
    while (consoles.live.size > 0 && Date.now() < deadline) await sleep(100);
    consoles.closeAll('SHUTTING_DOWN', 'the gateway is shutting down; reconnect');
    const grace = Date.now() + CLOSE_GRACE_MS;
    while ((consoles.live.size > 0 || consoles.waiting.size > 0) && Date.now() < grace) await sleep(20);
    consoles.stop();
    await registry.stop();
    const closed = listener.close();
    // server.close() does not end upgraded sockets or idle keep-alive connections.
    for (const socket of sockets) socket.destroy();
    await closed;
    proxy.close();
    log.info('gateway stopped');
  }

  return {
    server,
    consoles,
    url,
    get draining() {
      return draining;
    },
    close: () => (closing ??= drainAndClose()),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
