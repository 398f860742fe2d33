// WebSocket pass-through to a websockify endpoint with http-proxy: the browser's upgrade is
// forwarded on a socket we already dialled (so dial errors and timeouts are ours, with our close
// codes). After the target's 101 both sockets are handed to the pass-through pump
// (pass-through.ts): http-proxy's own piping is taken down before a byte flows, so the pump alone
// decides how the console ends. Settles exactly once.
import { Agent, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import httpProxy from 'http-proxy';
import { GatewayError } from '../errors.js';

export type WsProxy = httpProxy;

/** Target sockets switched to WebSocket whose hand-over waits for http-proxy's 'open'. */
const handOvers = new WeakMap<Socket, () => void>();

export function createWsProxy(): WsProxy {
  const proxy = httpProxy.createProxyServer({ ws: true, ignorePath: true, changeOrigin: true, xfwd: false });
  // Every call passes its own callback; this only keeps a stray emit from crashing the process.
  proxy.on('error', () => {});
  // Emitted synchronously right after http-proxy wrote the 101 and piped the sockets, before any
  // data flows (piping starts on the next tick).
  proxy.on('open', (proxySocket: Socket) => handOvers.get(proxySocket)?.());
  return proxy;
}

/**
 * Takes `browser` and `target` back from http-proxy: its pipes (which end one side when the other
 * ends, with no close frame) and its error handlers (which end the browser's socket) are removed.
 */
function takeBack(browser: Duplex, target: Socket): void {
  target.unpipe(browser);
  browser.unpipe(target);
  target.removeAllListeners('error');
  browser.removeAllListeners('error');
  // Unpiped streams are paused; the pump attaches its listeners and resumes them.
  target.pause();
  browser.pause();
}

/** Headers the browser sent to the gateway that must not reach a tenant's VM. */
function scrubHeaders(req: IncomingMessage): void {
  delete req.headers.cookie;
  delete req.headers.authorization;
  const offered = req.headers['sec-websocket-protocol'];
  if (offered !== undefined) {
    const kept = offered.split(',').map((p) => p.trim()).filter((p) => p && !p.startsWith('ticket.'));
    if (kept.length > 0) req.headers['sec-websocket-protocol'] = kept.join(', ');
    else delete req.headers['sec-websocket-protocol'];
  }
}

/**
 * Forwards the upgrade in `req` over `target` (connected to the websockify endpoint) to `path`.
 * Resolves with the target socket once both sides are switched (paused, nothing piped, no error
 * listener left on either: the caller must add its own at once); rejects with
 * DIAL_FAILED when the target answers anything but 101. `refuse` runs synchronously on failure:
 * http-proxy ends the browser socket right after reporting an error, so a refusal written later
 * would be lost.
 */
export function proxyUpgrade(
  proxy: WsProxy,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  target: Socket,
  hostHeader: string,
  path: string,
  refuse: (error: GatewayError) => void,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error: GatewayError) => {
      if (settled) return;
      settled = true;
      proxy.off('proxyReqWs', onProxyReq);
      refuse(error);
      target.destroy();
      reject(error);
    };
    const onProxyReq = (proxyReq: import('node:http').ClientRequest, forwarded: IncomingMessage) => {
      if (forwarded !== req) return;
      proxy.off('proxyReqWs', onProxyReq);
      proxyReq.on('response', (res: IncomingMessage) => {
        // http-proxy writes a non-101 answer to the browser unless the response claims to be an
        // upgrade; claim it, so the browser gets our close code and reason instead of a bare 1006.
        (res as unknown as { upgrade: boolean }).upgrade = true;
        res.destroy();
        fail(new GatewayError('DIAL_FAILED', `the VM's websockify refused the WebSocket (HTTP ${res.statusCode})`));
        // Nothing follows a refusal: end the browser's side after the close frame. Without this
        // the close handshake stalled here until the socket was destroyed (the test catches it).
        socket.end();
      });
      proxyReq.on('upgrade', (_res: IncomingMessage, proxySocket: Socket) => {
        if (settled) return;
        settled = true;
        handOvers.set(proxySocket, () => {
          handOvers.delete(proxySocket);
          takeBack(socket, proxySocket);
          resolve(proxySocket);
        });
      });
    };
    proxy.on('proxyReqWs', onProxyReq);
    scrubHeaders(req);
    const agent = new Agent();
    agent.createConnection = () => target;
    target.on('close', () => fail(new GatewayError('DIAL_FAILED', 'the VM closed the connection during the WebSocket handshake')));
    proxy.ws(req, socket, head, { target: `ws://${hostHeader}${path}`, agent }, () =>
      fail(new GatewayError('DIAL_FAILED', 'the WebSocket handshake with the VM failed')),
    );
  });
}
