// The byte pump between a browser WebSocket and the VM's raw VNC TCP port (what websockify does).
// Bytes flow in order both ways as binary frames. Backpressure is explicit on both sides, so a
// background tab that stops reading parks the VM's socket instead of growing our memory: at most
// `highWaterMark` bytes (plus one read) wait for the browser, at most one message for the VM.
import type { Socket } from 'node:net';
import { WebSocket } from 'ws';
import { toGatewayError } from '../errors.js';
import type { Traffic } from '../ops/metrics.js';
import { TEXT_FRAME_REFUSED } from './browser-frames.js';
import type { OnStop, Pump, PumpStats } from './pump.js';
import type { ViewOnlyFilter } from './view-only.js';
import { HEADROOM, SlabWrites, readsOf, type ReadHandler, type VmReads } from './vm-reads.js';

export interface BridgeOptions {
  highWaterMark: number;
  traffic: Traffic;
  viewOnly?: ViewOnlyFilter | undefined;
  onStop: OnStop;
}

const SEND_OPTIONS = { binary: true } as const;
/** How long a browser has to answer our close frame before its connection is dropped. */
const CLOSE_ANSWER_MS = 3_000;

/**
 * Pipes `ws` ⇄ `tcp` until either side ends or the owner closes it. `browser` is the socket under
 * `ws`: its 'close' is the end of the browser side even when `ws` is paused and would otherwise
 * emit 'close' only after its receiver drains.
 */
export function bridge(ws: WebSocket, browser: Socket, tcp: Socket, options: BridgeOptions): Pump {
  const { highWaterMark, traffic, viewOnly, onStop } = options;
  const stats: PumpStats = { down: 0, up: 0, lastActivity: Date.now() };
  let lost: string | undefined;

  const reads = readsOf(tcp);
  const early = reads.take(downstream(ws, browser, tcp, reads, { highWaterMark, traffic, stats }));
  if (early !== undefined) {
    stats.down += early.length;
    traffic.down += early.length;
    ws.send(early, SEND_OPTIONS);
  }
  tcp.resume();
  tcp.on('drain', function tcpOnDrain() {
    ws.resume();
  });
  tcp.on('error', function tcpOnError(error: NodeJS.ErrnoException) {
    lost ??= error.code ?? 'error';
  });
  // Resolved once both connections are closed. Plain 'close' listeners (each socket closes once):
  // a once() wrapper per listener would cost every idle console.
  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));
  let open = 2;
  tcp.on('close', function tcpOnClose() {
    if (lost === undefined) onStop({ code: 'VM_CLOSED', message: 'the VM closed the console connection' });
    else onStop({ code: 'VM_CONNECTION_LOST', message: `lost the connection to the VM console (${lost})` });
    if (--open === 0) resolveDone();
  });
  browser.on('close', function browserOnClose() {
    onStop(browserClosed);
    tcp.destroy();
    if (--open === 0) resolveDone();
  });

  ws.on('message', function wsOnMessage(data: Buffer, isBinary: boolean) {
    // The console speaks binary RFB and noVNC never sends text: none of it reaches the VM.
    if (!isBinary) return onStop(TEXT_FRAME_REFUSED);
    stats.lastActivity = Date.now();
    stats.up += data.length;
    traffic.up += data.length;
    let bytes = data;
    if (viewOnly !== undefined) {
      try {
        bytes = viewOnly.filter(data);
      } catch (error) {
        const failure = toGatewayError(error);
        onStop({ code: failure.code, message: failure.message });
        return;
      }
      if (bytes.length === 0) return;
    }
    if (!tcp.write(bytes)) ws.pause();
  });
  ws.on('close', function wsOnClose(code: number) {
    // 1006: the connection dropped without a close frame; 1002/1007/1009: ws refused a frame and
    // already sent its close code.
    onStop(code === 1002 || code === 1007 || code === 1009 ? browserProtocolError(code) : browserClosed);
    tcp.destroy();
  });

  let alive = true;
  ws.on('pong', () => (alive = true));

  return {
    stats,
    done,
    close(code, reason) {
      // Read again, or the browser's answer to our close frame would wait behind a paused socket.
      ws.resume();
      ws.close(code, reason);
      tcp.destroy();
      // ws would wait 30 s for a silent browser's answer; the console would hold its place as long.
      setTimeout(() => ws.terminate(), CLOSE_ANSWER_MS).unref();
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
}

const browserClosed = { code: 'BROWSER_CLOSED', message: 'the browser closed the console' } as const;

function browserProtocolError(code: number) {
  return { code: 'BROWSER_PROTOCOL_ERROR', message: 'the browser sent a frame the console cannot take', closeCode: code } as const;
}

interface Downstream {
  highWaterMark: number;
  traffic: Traffic;
  stats: PumpStats;
}

/**
 * VM → browser without ws.send: each read becomes one binary frame written with ONE socket write —
 * the header goes into the headroom before the payload. Reads into a slab are written without a
 * copy (SlabWrites holds the slab until the write completed); reads into the shared buffer (not
 * streaming) are copied into the frame. The writes keep their order with ws's own (pings, close
 * frames): all go to the same socket, and none is written once ws is closing.
 */
function downstream(ws: WebSocket, browser: Socket, tcp: Socket, reads: VmReads, o: Downstream): ReadHandler {
  let paused = false;
  const slabs = new SlabWrites(reads, browser, () => {
    if (paused && browser.writableLength <= o.highWaterMark) {
      paused = false;
      tcp.resume();
    }
  });
  return function onVmRead(nread: number, view: Buffer): boolean {
    o.stats.lastActivity = Date.now();
    o.stats.down += nread;
    o.traffic.down += nread;
    if (ws.readyState !== WebSocket.OPEN || browser.destroyed) {
      slabs.afterRead(nread, view, true); // the console is ending: drop
      return true;
    }
    const header = nread < 126 ? 2 : nread < 65536 ? 4 : 10;
    const slab = slabs.slabOf(view);
    let frame: Buffer;
    if (slab !== undefined) {
      frame = slab.whole.subarray(HEADROOM - header, HEADROOM + nread);
    } else {
      frame = Buffer.allocUnsafe(header + nread);
      view.copy(frame, header, 0, nread);
    }
    writeHeader(frame, nread, header);
    slabs.write(frame);
    // Parked behind a slow browser: no read buffer of its own until it drains.
    paused = browser.writableLength > o.highWaterMark;
    slabs.afterRead(nread, view, paused);
    return !paused;
  };
}

/** FIN + binary opcode, then the payload length in 7, 7+16 or 7+64 bits (server frames are unmasked). */
function writeHeader(frame: Buffer, length: number, header: number): void {
  frame[0] = 0x82;
  if (header === 2) {
    frame[1] = length;
  } else if (header === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(0, 2);
    frame.writeUInt32BE(length, 6);
  }
}
