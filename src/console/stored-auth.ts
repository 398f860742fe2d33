// The console path for a target with stored VNC credentials: the gateway authenticates to the VM
// before it answers the browser's handshake (a wrong password is a refusal with 4502 and a reason,
// not a prompt), then, as the first step of the live console's pump, offers the browser security
// None; each side within a deadline.
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { GatewayError, toGatewayError } from '../errors.js';
import { bridge, type BridgeOptions } from './bridge.js';
import type { Credentials } from './credentials.js';
import type { Pump, PumpStats } from './pump.js';
import { authenticateVm, offerNone } from './rfb-auth.js';
import { bounded, socketIo, webSocketIo } from './rfb-io.js';

/** Time for either side's security handshake; both are a few round trips. */
export const RFB_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * Authenticates to the VM on `vm` with `credentials`, leaving `vm` paused (with anything it sent
 * early put back) for the pump; destroys it on failure.
 */
export async function authenticateVmSocket(vm: Socket, credentials: Credentials, signal: AbortSignal): Promise<void> {
  const io = socketIo(vm);
  try {
    await bounded(() => authenticateVm(io, credentials), {
      timeoutMs: RFB_HANDSHAKE_TIMEOUT_MS,
      signal,
      cancel: () => vm.destroy(),
      timedOut: () => new GatewayError('DIAL_FAILED', `the VM console did not complete VNC authentication within ${RFB_HANDSHAKE_TIMEOUT_MS / 1000} s`),
      closed: () => new GatewayError('DIAL_FAILED', 'the VM closed the console connection during VNC authentication'),
    });
  } catch (error) {
    vm.destroy();
    throw error;
  } finally {
    io.release();
  }
}

/** Offers the browser security None on `ws`; resolves with bytes it sent past the handshake. */
async function greetBrowser(ws: WebSocket): Promise<Buffer> {
  const io = webSocketIo(ws);
  try {
    await bounded(() => offerNone(io), {
      timeoutMs: RFB_HANDSHAKE_TIMEOUT_MS,
      cancel: () => ws.terminate(),
      timedOut: () => new GatewayError('BAD_REQUEST', `the browser did not complete the RFB handshake within ${RFB_HANDSHAKE_TIMEOUT_MS / 1000} s`),
      closed: () => new GatewayError('BROWSER_CLOSED', 'the browser closed the console'),
    });
  } catch (error) {
    // Detached on failure too: the pump's close path must not race a handshake listener.
    io.release();
    throw error;
  }
  return io.release();
}

/**
 * A pump that first answers the browser's security handshake, then runs the bridge. Until the
 * bridge runs, `close` ends both sides itself; a failed handshake is reported through `onStop`.
 */
export function greetThenBridge(ws: WebSocket, browser: Socket, vm: Socket, options: BridgeOptions): Pump {
  let inner: Pump | undefined;
  let closed = false;
  const browserGone = new Promise<void>((resolve) => (browser.destroyed ? resolve() : browser.once('close', () => resolve())));
  const started = Date.now();
  const stats: PumpStats = {
    get down() { return inner?.stats.down ?? 0; },
    get up() { return inner?.stats.up ?? 0; },
    get lastActivity() { return inner?.stats.lastActivity ?? started; },
  };
  const done = (async () => {
    try {
      const early = await greetBrowser(ws);
      if (closed || browser.destroyed) throw new GatewayError('BROWSER_CLOSED', 'the browser closed the console');
      inner = bridge(ws, browser, vm, options);
      vm.resume(); // paused since VNC authentication; the bridge now listens
      // Whatever the browser sent past the handshake (ClientInit, in a hurry) takes the bridge's path.
      if (early.length > 0) ws.emit('message', early, true);
      await inner.done;
    } catch (error) {
      const failure = toGatewayError(error);
      options.onStop({ code: failure.code, message: failure.message });
      vm.destroy();
      await browserGone;
    }
  })();
  return {
    stats,
    done,
    close(code, reason) {
      if (inner !== undefined) return inner.close(code, reason);
      closed = true;
      ws.close(code, reason);
      vm.destroy();
    },
    heartbeat: () => inner?.heartbeat() ?? true,
  };
}
