// One readiness probe attempt against a session's target. A console
// is ready when it speaks, not when a port is open: `vnc` targets (on TCP or a unix socket) must
// send the RFB banner (RFC 6143 §7.1.1); `websockify` targets must complete a WebSocket handshake
// and relay that banner, the decisive check, and before it serve a noVNC page, unless they serve
// none (`webRoot: false`, or NOVNC_READY_PATHS=[]). Every attempt settles once, with a one-line
// reason on failure, and leaves no socket or timer behind.
import { request, type IncomingMessage } from 'node:http';
import { connect, isIP, type Socket } from 'node:net';
import { WebSocket } from 'ws';
import type { Protocol } from '../db/schema.js';
import { GatewayError } from '../errors.js';
import type { CidrList, Resolver } from '../console/target.js';
import { checkTarget, type VmEndpoint } from '../console/vm-endpoint.js';
import { isSocketTarget, type AddressTarget, type Target } from '../db/sessions.js';
import { openCredentials, type Credentials } from '../console/credentials.js';
import type { Config } from '../config.js';
import type { SessionRow } from '../db/schema.js';
import { authenticateVm } from '../console/rfb-auth.js';
import { socketIo } from '../console/rfb-io.js';

/**
 * Where a failed probe stopped, for console_gateway_probe_failures_total{kind}: the TCP connection
 * (or name resolution), the RFB banner or handshake, the HTTP ready page, the WebSocket handshake,
 * or a target outside TARGET_ALLOWED_CIDRS (or a socket outside TARGET_ALLOWED_SOCKET_DIRS).
 */
export type ProbeFailureKind = 'tcp' | 'banner' | 'http' | 'websocket' | 'outside_cidrs';

/** `forbidden`: the target is outside TARGET_ALLOWED_CIDRS, so retrying cannot help. */
export type ProbeResult =
  | { ok: true; elapsedMs: number }
  | { ok: false; reason: string; kind: ProbeFailureKind; elapsedMs: number; forbidden?: true };

export interface ProbeOptions {
  allowed: CidrList;
  /** TARGET_ALLOWED_SOCKET_DIRS; [] refuses unix-socket targets. Required, so no caller forgets it. */
  socketDirs: readonly string[];
  /** Pages of which one must answer 2xx/3xx before the WebSocket step; [] skips the HTTP step. */
  readyPaths: readonly string[];
  /** Budget of each network step (connect + banner, one HTTP GET, the WebSocket handshake + banner). */
  attemptTimeoutMs: number;
  signal?: AbortSignal;
  resolve?: Resolver;
  /** A session's sealed VNC credentials: a `vnc` probe then authenticates, not just reads the banner. */
  credentials?: StoredCredentials | undefined;
}

export interface StoredCredentials {
  key: Uint8Array | undefined;
  sessionId: string;
  sealed: string | null;
}

/** The probe option for a session row's stored credentials (none stored: no option). */
export function storedCredentials(row: Pick<SessionRow, 'id' | 'target_credentials'>, config: Pick<Config, 'credentialsKey'>): { credentials?: StoredCredentials } {
  return row.target_credentials === null ? {} : { credentials: { key: config.credentialsKey, sessionId: row.id, sealed: row.target_credentials } };
}

const RFB_BANNER = /^RFB \d{3}\.\d{3}\n$/;
const BANNER_BYTES = 12;

/** A failed step: its message is the probe's one-line reason. */
class NotReady extends Error {}

/** The options of one attempt: each step reports how far it got, which names a failure's kind. */
interface Attempt extends ProbeOptions {
  reached(kind: ProbeFailureKind): void;
}

/** Probes `target` once. Never throws: a forbidden or unresolvable target is a failed probe. */
export async function probeSession(target: Target, protocol: Protocol, options: ProbeOptions): Promise<ProbeResult> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  let kind: ProbeFailureKind = 'tcp';
  const attempt: Attempt = { ...options, reached: (k) => (kind = k) };
  try {
    options.signal?.throwIfAborted();
    const rules = { cidrs: options.allowed, socketDirs: options.socketDirs, ...(options.resolve ? { resolve: options.resolve } : {}) };
    const endpoint = await checkTarget(target, rules);
    if (protocol === 'vnc') {
      const stored = options.credentials;
      const credentials = stored === undefined ? undefined : openCredentials(stored.key, stored.sessionId, stored.sealed);
      await (credentials === undefined ? readVncBanner(endpoint, attempt) : authenticate(endpoint, credentials, attempt));
    } else if ('host' in endpoint && !isSocketTarget(target)) {
      if (target.webRoot !== false && options.readyPaths.length > 0) await getReadyPage(endpoint.host, target, attempt);
      attempt.reached('websocket');
      await readWebSocketBanner(endpoint.host, target, attempt);
    } else {
      throw new NotReady('a websockify target needs a host and port, not a unix socket');
    }
    return { ok: true, elapsedMs: elapsed() };
  } catch (error) {
    const forbidden = error instanceof GatewayError && error.code === 'TARGET_FORBIDDEN';
    return {
      ok: false,
      reason: reasonOf(error),
      kind: forbidden ? 'outside_cidrs' : kind,
      elapsedMs: elapsed(),
      ...(forbidden ? { forbidden: true as const } : {}),
    };
  }
}

function reasonOf(error: unknown): string {
  if (error instanceof NotReady || error instanceof GatewayError) return error.message;
  if ((error as Error)?.name === 'AbortError') return 'probe aborted';
  return `probe error: ${(error as Error)?.message ?? String(error)}`.split('\n')[0]!;
}

const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;

/** Why a connection attempt failed, in the words an operator searches for. */
function connectReason(error: NodeJS.ErrnoException, timeoutMs: number, unix: boolean): string {
  switch (error.code) {
    case 'ECONNREFUSED':
      // A unix socket whose server died: the file is still there, nobody accepts on it.
      return unix ? 'unix socket connect refused (no server listening)' : 'TCP connect refused';
    case 'ETIMEDOUT':
      return `TCP connect timed out after ${seconds(timeoutMs)}`;
    case 'ECONNRESET':
      return 'connection reset by the VM';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `TCP connect failed: host unreachable (${error.code})`;
    default:
      return `TCP connect failed (${error.code ?? error.message})`;
  }
}

/** Printable form of a wrong banner, so the reason shows what answered instead (HTTP, SSH…). */
function shown(bytes: Buffer): string {
  return JSON.stringify(bytes.toString('latin1').replace(/[^\x20-\x7e]/g, '.'));
}

/**
 * Runs `body` with a deadline and the caller's signal; `cleanup` always runs once (destroying
 * sockets), whichever of success, failure, timeout or abort comes first.
 */
function step<T>(
  options: ProbeOptions,
  timeoutReason: () => string,
  body: (settle: { resolve(value: T): void; reject(error: Error): void }) => () => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let done = false;
    let cleanup: () => void = () => {};
    const finish = (action: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      cleanup();
      action();
    };
    const onAbort = () => finish(() => reject(options.signal!.reason));
    const timer = setTimeout(() => finish(() => reject(new NotReady(timeoutReason()))), options.attemptTimeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    cleanup = body({ resolve: (v) => finish(() => resolve(v)), reject: (e) => finish(() => reject(e)) });
    if (done) cleanup();
  });
}

function readVncBanner(endpoint: VmEndpoint, options: Attempt): Promise<void> {
  let connected = false;
  const unix = 'path' in endpoint;
  const budget = seconds(options.attemptTimeoutMs);
  const timeout = () => (connected ? `no RFB banner within ${budget}` : `${unix ? 'unix socket' : 'TCP'} connect timed out after ${budget}`);
  return step<void>(options, timeout, ({ resolve, reject }) => {
    const socket: Socket = connect(endpoint);
    let received = Buffer.alloc(0);
    if (!unix) socket.setNoDelay(true);
    socket.once('connect', () => {
      connected = true;
      options.reached('banner');
    });
    socket.on('error', (error: NodeJS.ErrnoException) =>
      reject(new NotReady(connected ? `connection to the VM failed (${error.code ?? error.message})` : connectReason(error, options.attemptTimeoutMs, unix))),
    );
    socket.on('close', () => reject(new NotReady(connected ? 'the VM closed the connection before the RFB banner' : 'connect failed')));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < BANNER_BYTES) return;
      const banner = received.subarray(0, BANNER_BYTES);
      if (RFB_BANNER.test(banner.toString('latin1'))) resolve();
      else reject(new NotReady(`not an RFB banner: got ${shown(banner)}`));
    });
    return () => socket.destroy();
  });
}

/** Connects and runs VNC authentication with the stored credentials, as the console path will. */
function authenticate(endpoint: VmEndpoint, credentials: Credentials, options: Attempt): Promise<void> {
  let connected = false;
  const unix = 'path' in endpoint;
  const budget = seconds(options.attemptTimeoutMs);
  const timeout = () => (connected ? `VNC authentication did not complete within ${budget}` : `${unix ? 'unix socket' : 'TCP'} connect timed out after ${budget}`);
  return step<void>(options, timeout, ({ resolve, reject }) => {
    const socket: Socket = connect(endpoint);
    if (!unix) socket.setNoDelay(true);
    socket.on('error', (error: NodeJS.ErrnoException) =>
      reject(new NotReady(connected ? `connection to the VM failed (${error.code ?? error.message})` : connectReason(error, options.attemptTimeoutMs, unix))),
    );
    socket.once('connect', () => {
      connected = true;
      options.reached('banner');
      authenticateVm(socketIo(socket), credentials).then(
        () => resolve(),
        (error: unknown) => reject(new NotReady(error instanceof GatewayError ? error.message : 'the VM closed the connection during VNC authentication')),
      );
    });
    return () => socket.destroy();
  });
}

const hostHeader = (target: AddressTarget) => `${isIP(target.host) === 6 ? `[${target.host}]` : target.host}:${target.port}`;
const urlHost = (address: string) => (isIP(address) === 6 ? `[${address}]` : address);

/** GETs each ready path in turn; the first 2xx/3xx wins. Refusals stop at once: no path will answer. */
async function getReadyPage(address: string, target: AddressTarget, options: Attempt): Promise<void> {
  const failures: string[] = [];
  for (const p of options.readyPaths) {
    const path = `/${p.replace(/^\/+/, '')}`;
    const status = await step<number>(options, () => `no HTTP answer on ${path} within ${seconds(options.attemptTimeoutMs)}`, ({ resolve, reject }) => {
      const req = request({ host: address, port: target.port, path, method: 'GET', headers: { host: hostHeader(target) }, agent: false });
      req.once('socket', (socket: Socket) => socket.once('connect', () => options.reached('http')));
      req.on('response', (res: IncomingMessage) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', (error: NodeJS.ErrnoException) =>
        reject(new NotReady(error.code === 'ECONNREFUSED' ? 'TCP connect refused' : `HTTP request failed on ${path} (${error.code ?? error.message})`)),
      );
      req.end();
      return () => req.destroy();
    });
    if (status >= 200 && status < 400) return;
    failures.push(`HTTP ${status} on ${path}`);
  }
  throw new NotReady(failures.join(', '));
}

/** Opens the target's WebSocket (subprotocol `binary`) and waits for the RFB banner as data. */
function readWebSocketBanner(address: string, target: AddressTarget, options: Attempt): Promise<void> {
  const raw = target.path ?? '/';
  const path = raw.startsWith('/') ? raw : `/${raw}`;
  return step<void>(options, () => `no RFB banner over the WebSocket within ${seconds(options.attemptTimeoutMs)}`, ({ resolve, reject }) => {
    // Dial the checked address, never the name again; the Host header keeps virtual hosting working.
    const ws = new WebSocket(`ws://${urlHost(address)}:${target.port}${path}`, ['binary'], {
      headers: { host: hostHeader(target) },
      perMessageDeflate: false,
      followRedirects: false,
      handshakeTimeout: options.attemptTimeoutMs,
      maxPayload: 64 * 1024,
    });
    let received = Buffer.alloc(0);
    ws.once('open', () => options.reached('banner'));
    ws.on('unexpected-response', (req, res) => {
      res.resume();
      req.destroy();
      reject(new NotReady(`WebSocket handshake refused (HTTP ${res.statusCode})`));
    });
    ws.on('error', (error: NodeJS.ErrnoException) =>
      reject(new NotReady(error.code === 'ECONNREFUSED' ? 'TCP connect refused' : `WebSocket handshake failed (${error.code ?? error.message.split('\n')[0]})`)),
    );
    ws.on('close', (code) => reject(new NotReady(`the WebSocket closed before the RFB banner (code ${code})`)));
    ws.on('message', (data, isBinary) => {
      const chunk = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
      if (!isBinary) return reject(new NotReady('the WebSocket sent text instead of the RFB banner'));
      received = Buffer.concat([received, chunk]);
      if (received.length < BANNER_BYTES) return;
      const banner = received.subarray(0, BANNER_BYTES);
      if (RFB_BANNER.test(banner.toString('latin1'))) resolve();
      else reject(new NotReady(`not an RFB banner over the WebSocket: got ${shown(banner)}`));
    });
    return () => ws.terminate();
  });
}
