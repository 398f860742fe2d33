// The console path, top to bottom: origin → ticket → session → wait → target → dial → pipe → close.
// The browser's handshake is completed only once the VM console answers, so every failure before
// that point becomes a completed handshake closed with the documented code and reason (`refuse`),
// never a bare 1006. Once connected, the console is a live console (live-console.ts) until it ends;
// both refusals and endings are counted and logged by endings.ts.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Server as WebSocketServer } from 'ws';
import type { Config } from '../config.js';
import { databaseUnavailable } from '../db/failures.js';
import type { Store } from '../db/open.js';
import type { SessionRow } from '../db/schema.js';
import { isSocketTarget, targetOf } from '../db/sessions.js';
import { GatewayError, toGatewayError } from '../errors.js';
import { bridge } from './bridge.js';
import { endOnBadFrames, type ConsoleWebSocket } from './browser-frames.js';
import type { Consoles } from './consoles.js';
import { closeFrameOf, reportClose } from './endings.js';
import { startLiveConsole, type LiveOptions } from './live-console.js';
import { passThrough } from './pass-through.js';
import type { Metrics } from '../ops/metrics.js';
import { proxyUpgrade, type WsProxy } from './proxy-upgrade.js';
import { dial } from './dial.js';
import { checkTarget, rulesOf } from './vm-endpoint.js';
import { checkOrigin, handshakeProblem, pathOf, ticketOf, writeHttpError } from './handshake.js';
import { clientAddress } from './client-address.js';
import type { Limits } from './limits.js';
import type { Tickets } from './ticket.js';
import { ViewOnlyFilter } from './view-only.js';
import { openCredentials } from './credentials.js';
import type { LiveRegistry, Registering } from './live-registry.js';
import { authenticateVmSocket, greetThenBridge } from './stored-auth.js';
import { waitForSession } from './wait.js';

export interface UpgradeDeps {
  config: Config;
  store: Store;
  tickets: Tickets;
  consoles: Consoles;
  metrics: Metrics;
  log: Logger;
  wss: ConsoleWss;
  registry: LiveRegistry;
  proxy: WsProxy;
  limits: Limits;
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
  const { config, tickets, consoles, metrics, limits } = deps;
  const consoleId = randomBytes(6).toString('hex');
  const client = clientAddress(req, config.edge);
  let log = deps.log.child({ consoleId, clientAddress: client });
  const phase = phaseTimer(metrics);
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
  const held: (() => void)[] = [];
  let registering: Registering | undefined;
  try {
    if (deps.isDraining()) throw new GatewayError('SHUTTING_DOWN', 'the gateway is shutting down; reconnect');
    limits.checkThrottle(client);
    held.push(limits.holdClient(client, consoles.size));
    checkOrigin(req, config);
    const token = ticketOf(req);
    if (token === undefined) throw new GatewayError('TICKET_MISSING', 'no ticket: open the console through your platform');
    const claims = await phase('ticket', () => tickets.verify(token));
    log = deps.log.child({ consoleId, clientAddress: client, sessionId: claims.sessionId });
    // Before the ticket is consumed: a console refused for the session's cap keeps its ticket.
    held.push(limits.holdSession(claims.sessionId));
    // In the registry from here: a takeover or kick that reaches the console before it is live
    // ends its wait with the reason.
    const pending = deps.registry.begin({
      consoleId,
      sessionId: claims.sessionId,
      viewOnly: claims.viewOnly,
      exclusive: claims.exclusive,
      onEnd: (code, message) => waiting.abort(new GatewayError(code, message)),
    });
    registering = pending;
    const { session: current, registration } = await phase('database', () => databaseStep(tickets.consume(claims, pending.row)));
    if (current === undefined) throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
    pending.registered(registration);
    waiting.signal.throwIfAborted();

    const session = await waitForVm(deps, claims.sessionId, current, waiting);

    const credentials = openCredentials(config.credentialsKey, session.id, session.target_credentials);
    const target = targetOf(session)!;
    const vm = await phase('dial', async () => dial(await checkTarget(target, rulesOf(config)), config.connectTimeoutSeconds * 1000, waiting.signal));
    if (credentials !== undefined) await authenticateVmSocket(vm, credentials, waiting.signal);
    // An exclusive console registers (taking the others over) only now that its VM answered.
    const claim = await databaseStep(pending.claim()).catch((error: unknown) => {
      vm.destroy();
      throw error;
    });
    socket.off('close', browserGone);
    let ws: ConsoleWebSocket | undefined;
    if (session.protocol === 'websockify' && !isSocketTarget(target)) {
      const hostHeader = `${target.host}:${target.port}`;
      const path = target.path ?? '/';
      await proxyUpgrade(deps.proxy, req, socket, head, vm, hostHeader, path.startsWith('/') ? path : `/${path}`, refuse);
    } else {
      ws = accept(deps.wss, req, socket, head);
      if (ws === undefined) {
        vm.destroy(); // the browser left at the last moment
        throw new BrowserGone();
      }
    }
    answered = true;
    // From here the console holds its limits and registry row until it ends.
    const letGo = [...held.splice(0), claim.release];
    const live = { sessionId: claims.sessionId, consoleId, clientAddress: client, browser: socket, vm, viewOnly: claims.viewOnly, letGo };
    if (ws === undefined) startRaw(deps, log, live);
    else startVnc(deps, log, { ...live, ws, greet: credentials !== undefined });
    claim.live();
    registering = undefined;
  } catch (error) {
    void registering?.cancel();
    limits.noteRefusal(client, error);
    refuse(error);
  } finally {
    socket.off('close', browserGone);
    for (const release of held) release();
  }
}

/** Waits (bounded, woken by the database) until the session's VM is ready, counted as waiting. */
async function waitForVm(deps: UpgradeDeps, sessionId: string, current: SessionRow, waiting: AbortController): Promise<SessionRow> {
  const { config, consoles, metrics, store } = deps;
  consoles.waiting.add(waiting);
  metrics.consolesWaiting.inc();
  const waitStarted = performance.now();
  try {
    return await databaseStep(
      waitForSession(store.db, store.events, sessionId, {
        budgetMs: config.targetWaitTimeoutSeconds * 1000,
        gatingEnabled: config.readyGatingEnabled,
        signal: waiting.signal,
        current,
      }),
    );
  } finally {
    consoles.waiting.delete(waiting);
    metrics.consolesWaiting.dec();
    const waited = (performance.now() - waitStarted) / 1000;
    metrics.waitSeconds.observe(waited);
    metrics.upgradePhaseSeconds.observe({ phase: 'wait' }, waited);
  }
}

/**
 * The console runs on its own from here (live-console.ts) and lets go of what it holds when it
 * ends. serveConsole returns rather than waiting for the end, so its frame (the request, the
 * ticket, the session row) is not held for the console's whole life: a few KiB of every idle console.
 */
function goLive(deps: UpgradeDeps, log: Logger, c: PipedConsole & Pick<LiveOptions, 'kind' | 'start'>): void {
  try {
    startLiveConsole(deps, c);
  } catch (error) {
    // A bug, not a refusal: the handshake is answered, so the sockets go and nothing is kept.
    log.error({ err: error }, 'console failed to start');
    c.browser.destroy();
    c.vm.destroy();
    for (const release of c.letGo) release();
  }
}

/** Times a step of the upgrade into console_gateway_upgrade_phase_duration_seconds{phase}. */
function phaseTimer(metrics: Metrics) {
  return async <T>(name: 'ticket' | 'database' | 'dial', step: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await step();
    } finally {
      metrics.upgradePhaseSeconds.observe({ phase: name }, (performance.now() - started) / 1000);
    }
  };
}

class BrowserGone extends Error {}

/** A database call on the upgrade path: its own failures pass, anything else means the database. */
async function databaseStep<T>(step: Promise<T>): Promise<T> {
  try {
    return await step;
  } catch (error) {
    if (error instanceof GatewayError || error instanceof BrowserGone) throw error;
    throw databaseUnavailable(error);
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
  const reason = { code: failure.code, message: failure.message };
  deps.metrics.upgrades.inc({ outcome: failure.code });
  reportClose(deps.metrics, log, 'console refused', reason, failure.code === 'INTERNAL' || failure.code === 'DATABASE_UNAVAILABLE' ? { err: failure.cause } : {});
  if (socket.destroyed || !socket.writable) return;
  const ws = accept(deps.wss, req, socket, head);
  const frame = closeFrameOf(reason);
  ws?.close(frame.code, frame.reason);
}

/**
 * Completes the browser's handshake synchronously (no verifyClient is configured); undefined when
 * the browser's socket is no longer there to answer.
 */
function accept(wss: ConsoleWss, req: IncomingMessage, socket: Socket, head: Buffer): ConsoleWebSocket | undefined {
  let accepted: ConsoleWebSocket | undefined;
  wss.handleUpgrade(req, socket, head, (ws) => {
    // A protocol error from the browser is reported on 'error'; unheard, it would crash the process.
    ws.on('error', wsOnError);
    accepted = ws;
  });
  return accepted;
}

type ConsoleWss = WebSocketServer<typeof ConsoleWebSocket>;

/** A console whose handshake is answered, handed to its pump. */
interface PipedConsole extends Omit<LiveOptions, 'kind' | 'start'> {
  browser: Socket;
  vm: Socket;
  viewOnly: boolean;
}

interface VncConsole extends PipedConsole {
  ws: ConsoleWebSocket;
  /** The gateway authenticated to the VM itself: it answers the browser's security handshake. */
  greet: boolean;
}

function startVnc(deps: UpgradeDeps, log: Logger, c: VncConsole): void {
  const filter = c.viewOnly ? new ViewOnlyFilter(c.greet ? 'init' : 'version') : undefined;
  goLive(deps, log, {
    ...c,
    kind: 'vnc',
    start: (onStop) => {
      endOnBadFrames(c.ws, onStop);
      const options = { highWaterMark: HIGH_WATER_MARK, traffic: deps.metrics.traffic, viewOnly: filter, onStop };
      return c.greet ? greetThenBridge(c.ws, c.browser, c.vm, options) : bridge(c.ws, c.browser, c.vm, options);
    },
  });
}

function startRaw(deps: UpgradeDeps, log: Logger, c: PipedConsole): void {
  const filter = c.viewOnly ? new ViewOnlyFilter() : undefined;
  goLive(deps, log, {
    ...c,
    kind: 'websockify',
    start: (onStop) => passThrough(c.browser, c.vm, { traffic: deps.metrics.traffic, viewOnly: filter, onStop }),
  });
}

function socketOnError(this: Duplex): void {
  this.destroy();
}

function wsOnError(): void {
  // ws closes the connection itself after an error; the pump and refusal paths see the 'close'.
}
