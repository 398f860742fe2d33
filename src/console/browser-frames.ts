// The browser's frames, beyond piping their bytes: a frame that breaks the protocol ends the
// console with a reason in words (the ws library would send its close code alone), and a text
// frame is refused with 1003, since the console speaks binary RFB and noVNC never sends text.
import { WebSocket } from 'ws';
import { browserFrameError, closeReason } from '../errors.js';
import type { EndReason } from './endings.js';

// Browser → VM traffic is key and pointer events, update requests and clipboard text (RFC 6143
// §7.5); a larger message is not a console talking.
export const MAX_BROWSER_MESSAGE_BYTES = 256 * 1024;

function reasonFor(closeCode: number): EndReason | undefined {
  const failure = browserFrameError(closeCode, MAX_BROWSER_MESSAGE_BYTES / 1024);
  return failure === undefined ? undefined : { code: failure.code, message: failure.message };
}

/** Why a console ends when the browser sends a text frame (the pump checks every message). */
export const TEXT_FRAME_REFUSED: EndReason = reasonFor(1003)!;

/**
 * The console's server-side WebSocket: it gives the closes ws makes by itself a reason. On a bad
 * frame ws calls `close(code)` without a reason and emits 'error' only afterwards, so `close` is
 * the one place the words can join the close frame. Every close the gateway makes itself carries
 * its own reason. A subclass (the server's `WebSocket` option), so it costs a console no closure.
 */
export class ConsoleWebSocket extends WebSocket {
  /** Why ws closed this console on a bad frame, once it did. */
  explained: EndReason | undefined;

  override close(code?: number, reason?: string | Buffer): void {
    const why = reason === undefined && code !== undefined ? reasonFor(code) : undefined;
    if (why === undefined) return super.close(code, reason);
    this.explained = why;
    super.close(code, closeReason(why.message));
  }
}

/**
 * Reports through `onStop` why ws closed a live console on a bad frame ('error' follows the
 * close at once, before 'close'), so the metric and the log line name what the browser was sent.
 */
export function endOnBadFrames(ws: ConsoleWebSocket, onStop: (reason: EndReason) => void): void {
  ws.on('error', function wsOnFrameError() {
    if (ws.explained !== undefined) onStop(ws.explained);
  });
}
