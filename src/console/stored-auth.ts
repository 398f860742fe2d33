// The console path for a target with stored VNC credentials: the gateway authenticates to the VM
// before it answers the browser's handshake (a wrong password is a refusal with 4502 and a reason,
// not a prompt), then offers the browser security None, each side within a deadline.
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { GatewayError } from '../errors.js';
import type { Credentials } from './credentials.js';
import { authenticateVm, offerNone } from './rfb-auth.js';
import { bounded, socketIo, webSocketIo } from './rfb-io.js';

/** Time for either side's security handshake; both are a few round trips. */
export const RFB_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * Authenticates to the VM on `vm` with `credentials`. Resolves with bytes the VM sent early (none
 * in practice) and leaves `vm` paused for the pump; destroys it on failure.
 */
export async function authenticateVmSocket(vm: Socket, credentials: Credentials, signal: AbortSignal): Promise<Buffer> {
  const io = socketIo(vm);
  try {
    await bounded(() => authenticateVm(io, credentials), {
      timeoutMs: RFB_HANDSHAKE_TIMEOUT_MS,
      signal,
      cancel: () => vm.destroy(),
      timedOut: () => new GatewayError('DIAL_FAILED', `the VM console did not complete VNC authentication within ${RFB_HANDSHAKE_TIMEOUT_MS / 1000} s`),
      closed: () => new GatewayError('DIAL_FAILED', 'the VM closed the console connection during VNC authentication'),
    });
    return io.release();
  } catch (error) {
    io.release();
    vm.destroy();
    throw error;
  }
}

/** Offers the browser security None on `ws`; resolves with bytes it sent past the handshake. */
export async function greetBrowser(ws: WebSocket): Promise<Buffer> {
  const io = webSocketIo(ws);
  try {
    await bounded(() => offerNone(io), {
      timeoutMs: RFB_HANDSHAKE_TIMEOUT_MS,
      cancel: () => ws.terminate(),
      timedOut: () => new GatewayError('BAD_REQUEST', `the browser did not complete the RFB handshake within ${RFB_HANDSHAKE_TIMEOUT_MS / 1000} s`),
      closed: () => new GatewayError('BAD_REQUEST', 'the browser left during the RFB handshake'),
    });
  } catch (error) {
    // Detach on failure too: the pump's close path must not race a handshake listener.
    io.release();
    throw error;
  }
  return io.release();
}
