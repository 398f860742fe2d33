// The byte pump between a browser WebSocket and the VM's raw VNC TCP port (what websockify does).
// Bytes flow in order both ways as binary frames. Backpressure is explicit on both sides, so a
// background tab that stops reading parks the VM's socket instead of growing our memory: at most
// `highWaterMark` bytes (plus one read) wait for the browser, at most one message for the VM.
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { CATALOGUE, closeReason, toGatewayError } from '../errors.js';
import type { Traffic } from '../ops/metrics.js';
import type { ViewOnlyFilter } from './view-only.js';

export interface BridgeState {
  lastActivity: number;
}

export type BridgeEnd = 'browser' | 'vm' | 'vm-error';

const SEND_OPTIONS = { binary: true } as const;

/**
 * Pipes `ws` ⇄ `tcp` until either side ends; an end or error on one side tears down the other with
 * the documented close code. Resolves once both connections are closed, with who ended it.
 * `browser` is the socket under `ws`: its 'close' is the end of the browser side even when `ws`
 * is paused and would otherwise emit 'close' only after its receiver drains.
 */
export function bridge(
  ws: WebSocket,
  browser: Socket,
  tcp: Socket,
  highWaterMark: number,
  traffic: Traffic,
  state: BridgeState,
  viewOnly?: ViewOnlyFilter,
): Promise<BridgeEnd> {
  return new Promise((resolve) => {
    let ended: BridgeEnd | undefined;
    let open = 2;
    const closed = () => --open === 0 && resolve(ended!);

    const resumeTcp = () => tcp.resume();
    tcp.on('data', function tcpOnData(chunk: Buffer) {
      state.lastActivity = Date.now();
      traffic.down += chunk.length;
      // The send callback fires once this frame reached the kernel, i.e. the queue has drained.
      const over = ws.bufferedAmount + chunk.length > highWaterMark;
      ws.send(chunk, SEND_OPTIONS, over ? resumeTcp : undefined);
      if (over) tcp.pause();
    });
    tcp.on('drain', function tcpOnDrain() {
      ws.resume();
    });
    tcp.on('error', function tcpOnError() {
      ended ??= 'vm-error';
    });
    tcp.on('close', function tcpOnClose() {
      ended ??= 'vm';
      // Read again, or the browser's answer to our close frame would wait behind a paused socket.
      ws.resume();
      if (ended === 'vm-error') ws.close(CATALOGUE.DIAL_FAILED.close, closeReason('lost the connection to the VM console'));
      else ws.close(CATALOGUE.VM_CLOSED.close, 'the VM closed the console connection');
      closed();
    });

    ws.on('message', function wsOnMessage(data: Buffer) {
      state.lastActivity = Date.now();
      traffic.up += data.length;
      let bytes = data;
      if (viewOnly !== undefined) {
        try {
          bytes = viewOnly.filter(data);
        } catch (error) {
          const failure = toGatewayError(error);
          ws.close(failure.closeCode, closeReason(failure.message));
          tcp.destroy();
          return;
        }
        if (bytes.length === 0) return;
      }
      if (!tcp.write(bytes)) ws.pause();
    });
    ws.on('close', function wsOnClose() {
      ended ??= 'browser';
      tcp.destroy();
    });
    browser.once('close', function browserOnClose() {
      ended ??= 'browser';
      tcp.destroy();
      closed();
    });
  });
}
