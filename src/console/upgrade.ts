// The console path, top to bottom: origin → ticket → session → wait → target → dial → pipe → close.
// The browser's handshake is completed only once the VM console answers, so every failure before
// that point becomes a completed handshake closed with the documented code and reason (`refuse`,
// the one place that turns an error into a close code, a log line and a metric), never a bare 1006.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { WebSocket, WebSocketServer } from 'ws';
import type { Config } from '../config.js';
import type { Store } from '../db/open.js';
import type { SessionRow } from '../db/schema.js';
import { isSocketTarget, targetOf } from '../db/sessions.js';
import { CATALOGUE, GatewayError, closeReason, toGatewayError, type ErrorCode } from '../errors.js';
import { bridge } from './bridge.js';
import type { Consoles, LiveConsole } from './consoles.js';
import type { Metrics } from '../ops/metrics.js';
import { proxyUpgrade, type WsProxy } from './proxy-upgrade.js';
import { dial } from './dial.js';
import { checkTarget, rulesOf } from './vm-endpoint.js';
import { checkOrigin, handshakeProblem, pathOf, ticketOf, writeHttpError } from './handshake.js';
import type { Tickets } from './ticket.js';
import { ViewOnlyFilter } from './view-only.js';
import { waitForSession } from './wait.js';

export interface UpgradeDeps {
  config: Config;
  store: Store;
  tickets: Tickets;
  consoles: Consoles;
  metrics: Metrics;
  log: Logger;
  wss: WebSocketServer;
  proxy: WsProxy;
  isDraining(): boolean;
}

/** Bytes queued towards one browser before the VM's socket is paused. */
const HIGH_WATER_MARK = 256 * 1024;

/** The 'upgrade' listener for the HTTP server. */
export function createUpgradeHandler(deps: UpgradeDeps) {
  return function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // Before anything async: an unhandled 'error' on this socket would crash the process.
    socket.on('error', socketOnError);
    if (pathOf(req) !== '/websockify') return writeHttpError(socket, 404, 'Not Found');
    const malformed = handshakeProblem(req);
    if (malformed !== undefined) return writeHttpError(socket, 400, malformed);
    serveConsole(deps, req, socket as Socket, head).catch((error: unknown) => {
      // serveConsole handles its own failures; this only keeps a bug from becoming a crash.
      deps.log.error({ err: error }, 'console handling failed unexpectedly');
      socket.destroy();
    });
  };
}

async function serveConsole(deps: UpgradeDeps, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
  const { config, store, tickets, consoles, metrics } = deps;
  let log = deps.log.child({ consoleId: randomBytes(6).toString('hex') });
  const waiting = new AbortController();
  const browserGone = () => waiting.abort(new BrowserGone());
  socket.once('close', browserGone);
  // Once the handshake is answered (a refusal, or the console itself) nothing more may be written.
  let answered = false;
  const refuse = (error: unknown) => {
    if (answered) return;
    answered = true;
    refuseUpgrade(deps, log, req, socket, head, error);
  };
  try {
    if (deps.isDraining()) throw new GatewayError('SHUTTING_DOWN', 'the gateway is shutting down; reconnect');
    if (config.maxConsoles > 0 && consoles.size >= config.maxConsoles) {
      throw new GatewayError('CAPACITY', 'the gateway is at its console limit; try again shortly');
    }
    checkOrigin(req, config);
    const token = ticketOf(req);
    if (token === undefined) throw new GatewayError('TICKET_MISSING', 'no ticket: open the console through your platform');
    const claims = await tickets.verify(token);
    log = log.child({ sessionId: claims.sessionId });
    const current = await databaseStep(tickets.consume(claims));
    if (current === undefined) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');

    consoles.waiting.add(waiting);
    metrics.consolesWaiting.inc();
    const waitStarted = performance.now();
    let session: SessionRow;
    try {
      session = await databaseStep(
        waitForSession(store.db, store.events, claims.sessionId, {
          budgetMs: config.targetWaitTimeoutSeconds * 1000,
          gatingEnabled: config.readyGatingEnabled,
          signal: waiting.signal,
          current,
        }),
      );
    } finally {
      consoles.waiting.delete(waiting);
      metrics.consolesWaiting.dec();
      metrics.waitSeconds.observe((performance.now() - waitStarted) / 1000);
    }

    const target = targetOf(session)!;
    const vm = await dial(await checkTarget(target, rulesOf(config)), config.connectTimeoutSeconds * 1000, waiting.signal);
    socket.off('close', browserGone);
    if (session.protocol === 'websockify' && !isSocketTarget(target)) {
      // The pass-through bytes are the target's WebSocket frames; input cannot be filtered there.
      if (claims.viewOnly) {
        vm.destroy();
        throw new GatewayError('VIEW_ONLY_UNSUPPORTED', 'view-only consoles need a vnc session; this one is websockify');
      }
      const hostHeader = `${target.host}:${target.port}`;
      const path = target.path ?? '/';
      await proxyUpgrade(deps.proxy, req, socket, head, vm, hostHeader, path.startsWith('/') ? path : `/${path}`, refuse);
      answered = true;
      await pipeRaw(deps, log, session.id, socket, vm);
    } else {
      const ws = accept(deps.wss, req, socket, head);
      answered = true;
      await pipeVnc(deps, log, session.id, ws, socket, vm, claims.viewOnly ? new ViewOnlyFilter() : undefined);
    }
  } catch (error) {
    refuse(error);
  } finally {
    socket.off('close', browserGone);
  }
}

class BrowserGone extends Error {}

/** A database call on the upgrade path: its own failures pass, anything else means the database. */
async function databaseStep<T>(step: Promise<T>): Promise<T> {
  try {
    return await step;
  } catch (error) {
    if (error instanceof GatewayError || error instanceof BrowserGone) throw error;
    throw new GatewayError('DATABASE_UNAVAILABLE', 'the console database is unreachable; try again shortly', { cause: error });
  }
}

/** The one place a refused upgrade becomes a close code, a log line and a metric. */
function refuseUpgrade(deps: UpgradeDeps, log: Logger, req: IncomingMessage, socket: Socket, head: Buffer, error: unknown): void {
  if (error instanceof BrowserGone || (socket.destroyed && !(error instanceof GatewayError))) {
    deps.metrics.upgrades.inc({ outcome: 'BROWSER_GONE' });
    log.info('the browser left before its console was ready');
    return;
  }
  const failure = toGatewayError(error);
  deps.metrics.upgrades.inc({ outcome: failure.code });
  deps.metrics.closes.inc({ code: String(failure.closeCode) });
  log[failure.level](
    { code: failure.code, closeCode: failure.closeCode, ...(failure.code === 'INTERNAL' || failure.code === 'DATABASE_UNAVAILABLE' ? { err: failure.cause } : {}) },
    `console refused: ${failure.message}`,
  );
  if (socket.destroyed || !socket.writable) return;
  const ws = accept(deps.wss, req, socket, head, true);
  ws?.close(failure.closeCode, closeReason(failure.message));
}

/** Completes the browser's handshake synchronously (no verifyClient is configured). */
function accept(wss: WebSocketServer, req: IncomingMessage, socket: Socket, head: Buffer): WebSocket;
function accept(wss: WebSocketServer, req: IncomingMessage, socket: Socket, head: Buffer, optional: true): WebSocket | undefined;
function accept(wss: WebSocketServer, req: IncomingMessage, socket: Socket, head: Buffer, optional = false): WebSocket | undefined {
  let accepted: WebSocket | undefined;
  wss.handleUpgrade(req, socket, head, (ws) => {
    // A protocol error from the browser is reported on 'error'; unheard, it would crash the process.
    ws.on('error', wsOnError);
    accepted = ws;
  });
  if (accepted === undefined && !optional) throw new BrowserGone();
  return accepted;
}

async function pipeVnc(
  deps: UpgradeDeps,
  log: Logger,
  sessionId: string,
  ws: WebSocket,
  browser: Socket,
  vm: Socket,
  viewOnly: ViewOnlyFilter | undefined,
): Promise<void> {
  let alive = true;
  ws.on('pong', () => (alive = true));
  let closedBy: ErrorCode | undefined;
  const live: LiveConsole = {
    sessionId,
    startedAt: Date.now(),
    lastActivity: Date.now(),
    close(code, message) {
      closedBy ??= code;
      ws.close(CATALOGUE[code].close, closeReason(message));
      vm.destroy();
    },
    heartbeat() {
      // While the pump holds the browser back nothing is read, pongs included.
      if (ws.isPaused) return true;
      if (!alive) return false;
      alive = false;
      ws.ping();
      return true;
    },
  };
  const ended = async () => {
    const end = await bridge(ws, browser, vm, HIGH_WATER_MARK, deps.metrics.traffic, live, viewOnly);
    // The code the gateway closed with: its own decision, else the bridge's answer to the VM side.
    const code = closedBy !== undefined ? CATALOGUE[closedBy].close : end === 'vm' ? CATALOGUE.VM_CLOSED.close : end === 'vm-error' ? CATALOGUE.DIAL_FAILED.close : undefined;
    if (code !== undefined) deps.metrics.closes.inc({ code: String(code) });
    return closedBy ?? end;
  };
  await track(deps, log, live, ended);
}

async function pipeRaw(deps: UpgradeDeps, log: Logger, sessionId: string, socket: Socket, vm: Socket): Promise<void> {
  let closedBy: string | undefined;
  const live: LiveConsole = {
    sessionId,
    startedAt: Date.now(),
    lastActivity: Date.now(),
    // The byte stream belongs to the target's WebSocket framing; a close frame of ours cannot be
    // spliced into it, so ending a pass-through console drops both connections.
    close(code) {
      closedBy ??= code;
      socket.destroy();
      vm.destroy();
    },
  };
  const traffic = deps.metrics.traffic;
  vm.on('data', (chunk: Buffer) => ((live.lastActivity = Date.now()), (traffic.down += chunk.length)));
  socket.on('data', (chunk: Buffer) => ((live.lastActivity = Date.now()), (traffic.up += chunk.length)));
  await track(deps, log, live, () => new Promise<string>((resolve) => socket.once('close', () => resolve(closedBy ?? 'closed'))));
}

async function track(deps: UpgradeDeps, log: Logger, live: LiveConsole, run: () => Promise<string>): Promise<void> {
  deps.consoles.add(live);
  deps.metrics.upgrades.inc({ outcome: 'connected' });
  deps.metrics.consolesActive.inc();
  log.info('console connected');
  try {
    const end = await run();
    const seconds = (Date.now() - live.startedAt) / 1000;
    deps.metrics.consoleSeconds.observe(seconds);
    log.info({ end, seconds }, 'console closed');
  } finally {
    deps.consoles.delete(live);
    deps.metrics.consolesActive.dec();
  }
}

function socketOnError(this: Duplex): void {
  this.destroy();
}

function wsOnError(): void {
  // ws closes the connection itself after an error; the pump and refusal paths see the 'close'.
}
