// The browser's frames, beyond piping their bytes: a frame that breaks the protocol ends the
// console with a reason in words (the ws library would send its close code alone), and a text
// frame is refused with 1003, since the console speaks binary RFB and noVNC never sends text.
import type { WebSocket } from 'ws';
import { browserFrameError, closeReason, type GatewayError } from '../errors.js';

// Browser → VM traffic is key and pointer events, update requests and clipboard text (RFC 6143
// §7.5); a larger message is not a console talking.
export const MAX_BROWSER_MESSAGE_BYTES = 256 * 1024;

const explained = new WeakMap<WebSocket, GatewayError>();

const frameError = (code: number) => browserFrameError(code, MAX_BROWSER_MESSAGE_BYTES / 1024);

/**
 * Gives the closes ws makes by itself a reason. On a bad frame ws calls `close(code)` without a
 * reason and emits 'error' only afterwards, so this instance's `close` is the one place the words
 * can join the close frame. Every close the gateway makes itself carries its own reason.
 */
export function explainProtocolCloses(ws: WebSocket): void {
  const close = ws.close.bind(ws);
  ws.close = (code?: number, reason?: string | Buffer) => {
    const failure = reason === undefined && code !== undefined ? frameError(code) : undefined;
    if (failure === undefined) return close(code, reason);
    explained.set(ws, failure);
    close(code, closeReason(failure.message));
  };
}

/**
 * Ends a live console through `end` (once per cause) when the browser breaks the protocol or
 * sends a text frame. The text check runs before every other 'message' listener, so `end` has
 * cut the VM's connection before the pump could forward a byte of it.
 */
export function endOnBadFrames(ws: WebSocket, end: (failure: GatewayError) => void): void {
  ws.on('error', function wsOnFrameError() {
    const failure = explained.get(ws);
    if (failure !== undefined) end(failure);
  });
  ws.prependListener('message', function wsOnTextFrame(_data: unknown, isBinary: boolean) {
    if (!isBinary) end(frameError(1003)!);
  });
}
