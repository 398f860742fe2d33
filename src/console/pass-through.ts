// The byte pump for websockify pass-through. The target's WebSocket frames flow to the browser and
// the browser's to the target unchanged and zero-copy, with backpressure both ways; a
// FrameBoundaries per direction follows the frame headers, so the gateway can put frames of its own
// between the target's: a ping to the browser, and on the way out a close frame with the documented
// code and reason to the browser (unmasked) and to the target (masked). A close frame either peer
// sends is forwarded as it is. For a view-only console the browser's frames are unmasked, their
// RFB input filtered and what remains sent on as frames of our own.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { toGatewayError } from '../errors.js';
import type { Traffic } from '../ops/metrics.js';
import type { EndReason } from './endings.js';
import { FrameBoundaries, FrameError, OPCODE, closePayload, encodeFrame, parseClose } from './frame-boundaries.js';
import type { OnStop, Pump, PumpStats } from './pump.js';
import type { ViewOnlyFilter } from './view-only.js';
import { SlabWrites, readsOf } from './vm-reads.js';

export interface PassThroughOptions {
  traffic: Traffic;
  viewOnly?: ViewOnlyFilter | undefined;
  onStop: OnStop;
}

/** How long a peer may take to finish the frame it is sending when the gateway closes. */
const FINISH_FRAME_MS = 1_000;
/** How long, after that, both peers have to answer our close frames before their sockets go. */
const CLOSE_ANSWER_MS = 2_000;
/** A frame the target left unfinished is completed with zeros (the browser only draws it) up to this size. */
const MAX_PADDING = 16 * 1024 * 1024;
const PING = encodeFrame(OPCODE.PING, Buffer.from('console-gateway'));

/** Pipes `browser` ⇄ `target` (both already switched to WebSocket) until both are closed. */
export function passThrough(browser: Socket, target: Socket, options: PassThroughOptions): Pump {
  return new PassThrough(browser, target, options);
}

class PassThrough implements Pump {
  readonly stats: PumpStats = { down: 0, up: 0, lastActivity: Date.now() };
  readonly done: Promise<void>;
  private readonly down = new FrameBoundaries({ control: (opcode, payload) => this.targetControl(opcode, payload) });
  private readonly up: FrameBoundaries;
  /** Frames of ours for the browser, waiting for a boundary in the target's stream. */
  private owedDown: Buffer[] = [];
  /** Our close frame for the target, waiting for a boundary in the browser's stream. */
  private owedUp: Buffer | undefined;
  /** A close frame (ours or the target's) went to the browser: nothing more goes down. */
  private browserClosed = false;
  /** A close frame (ours or the browser's) went to the target: nothing more goes up. */
  private targetClosed = false;
  private browserSaidClose = false;
  private targetSaid: { code: number; reason: string } | undefined;
  private downBroken = false;
  private upBroken = false;
  /** View-only: input the filter refused; the console ends with it. */
  private violation: unknown;
  private alive = true;
  private closing = false;
  private timer: NodeJS.Timeout | undefined;
  private lost: string | undefined;
  /** View-only: the browser's frames, filtered and framed anew, in order. */
  private upFrames: Buffer[] = [];
  private upData: Buffer[] = [];
  /** The target's reads: into reused buffers, sent on without a copy. */
  private readonly slabs: SlabWrites;

  constructor(
    private readonly browser: Socket,
    private readonly target: Socket,
    private readonly options: PassThroughOptions,
  ) {
    const viewOnly = options.viewOnly;
    this.up = new FrameBoundaries({
      control: (opcode, payload) => this.browserControl(opcode, payload),
      ...(viewOnly !== undefined ? { data: (piece: Buffer) => this.filterPiece(viewOnly, piece) } : {}),
    });
    const reads = readsOf(target);
    this.slabs = new SlabWrites(reads, browser, () => {});
    const early = reads.take((nread, view) => this.targetOnRead(nread, view));
    if (early !== undefined) this.targetOnData(early);
    browser.on('data', (chunk: Buffer) => this.browserOnData(chunk));
    browser.on('drain', () => target.resume());
    target.on('drain', () => browser.resume());
    target.on('error', (error: NodeJS.ErrnoException) => (this.lost ??= error.code ?? 'error'));
    browser.on('error', () => browser.destroy());
    // The HTTP server's sockets allow half-open connections: a browser that sent FIN is done.
    browser.on('end', () => browser.destroy());
    target.on('end', () => target.destroy());
    this.done = new Promise<void>((resolve) => {
      let open = 2;
      const closed = () => {
        if (--open > 0) return;
        clearTimeout(this.timer);
        resolve();
      };
      target.once('close', () => {
        this.targetGone();
        closed();
      });
      browser.once('close', () => {
        this.stop({ code: 'BROWSER_CLOSED', message: 'the browser closed the console' });
        target.destroy();
        closed();
      });
    });
    target.resume();
    browser.resume();
  }

  close(code: number, reason: string): void {
    if (this.closing) return;
    this.closing = true;
    const payload = closePayload(code, reason);
    if (!this.browserClosed) this.owedDown.push(encodeFrame(OPCODE.CLOSE, payload));
    if (!this.targetClosed) this.owedUp = encodeFrame(OPCODE.CLOSE, payload, randomBytes(4));
    // Read both again: their answers to our close frames may wait behind a paused socket.
    this.target.resume();
    this.browser.resume();
    this.flushDown();
    this.flushUp();
    if (this.target.destroyed) this.finishDown();
    this.timer = setTimeout(() => this.force(), FINISH_FRAME_MS);
    this.timer.unref();
  }

  heartbeat(): boolean {
    // While the pump holds the browser back nothing is read, pongs included.
    if (this.browser.isPaused() || this.closing) return true;
    if (!this.alive) return false;
    this.alive = false;
    this.owedDown.push(PING);
    this.flushDown();
    return true;
  }

  private stop(reason: EndReason): void {
    this.options.onStop(reason);
  }

  // ---------------------------------------------------------------- target → browser

  /** A read into a slab goes on without a copy; the shared buffer is copied out of before the next read. */
  private targetOnRead(nread: number, view: Buffer): boolean {
    const bytes = view.subarray(0, nread);
    this.targetOnData(this.slabs.slabOf(view) !== undefined ? bytes : Buffer.from(bytes));
    // Parked behind a slow browser (or no longer sending to it): no read buffer of its own.
    this.slabs.afterRead(nread, view, this.target.isPaused() || this.browserClosed || this.downBroken);
    return true;
  }

  private targetOnData(chunk: Buffer): void {
    this.stats.lastActivity = Date.now();
    this.stats.down += chunk.length;
    this.options.traffic.down += chunk.length;
    if (this.downBroken) return;
    if (this.browserClosed) return this.followDown(chunk);
    let at = 0;
    while (at < chunk.length && !this.browserClosed) {
      const from = at;
      try {
        at = this.down.advance(chunk, at, this.owedDown.length > 0);
      } catch (error) {
        return this.brokenDown(error);
      }
      this.sendDown(from === 0 && at === chunk.length ? chunk : chunk.subarray(from, at));
      if (this.targetSaid !== undefined) this.targetClosedFirst();
      else this.flushDown();
    }
    // Our close frame went out mid-chunk: keep following the rest for the target's answer.
    if (at < chunk.length) this.followDown(chunk.subarray(at));
  }

  /** After our close frame: only watch for the target's answer. */
  private followDown(chunk: Buffer): void {
    try {
      this.down.advance(chunk);
    } catch {
      this.downBroken = true;
      this.target.destroy();
      return;
    }
    this.finishIfAnswered();
  }

  private targetControl(opcode: number, payload: Buffer): void {
    if (opcode === OPCODE.CLOSE) this.targetSaid = parseClose(payload);
  }

  /** The target's close frame has just been forwarded to the browser. */
  private targetClosedFirst(): void {
    this.browserClosed = true;
    this.owedDown = [];
    const { code, reason } = this.targetSaid!;
    this.stop({ code: 'VM_CLOSED', message: reason || 'the VM closed the console connection', closeCode: code });
    this.finishIfAnswered();
  }

  private sendDown(bytes: Buffer): void {
    if (!this.slabs.write(bytes)) this.target.pause();
  }

  /** Writes the frames we owe the browser, if its stream is at a boundary. */
  private flushDown(): void {
    if (this.owedDown.length === 0 || !this.down.atBoundary || this.browserClosed) return;
    for (const frame of this.owedDown) {
      this.sendDown(frame);
      if (frame[0] === (0x80 | OPCODE.CLOSE)) this.browserClosed = true;
    }
    this.owedDown = [];
    this.finishIfAnswered();
  }

  /** The target's stream can no longer be followed: end it and close the browser side cleanly if possible. */
  private brokenDown(error: unknown): void {
    this.downBroken = true;
    const what = error instanceof FrameError ? error.message : String(error);
    this.stop({ code: 'VM_CONNECTION_LOST', message: `the VM's websockify sent a malformed WebSocket frame (${what})` });
    this.target.destroy();
  }

  /** The target is gone; complete the frame it left unfinished so our close frame can follow. */
  private finishDown(): void {
    if (this.browserClosed || this.owedDown.length === 0) return;
    const missing = this.downBroken ? undefined : this.down.unfinished;
    if (missing === undefined || missing > MAX_PADDING) {
      this.browser.destroy();
      return;
    }
    if (missing > 0) {
      const padding = Buffer.alloc(missing);
      this.down.advance(padding);
      this.sendDown(padding);
    }
    this.flushDown();
  }

  private targetGone(): void {
    if (this.targetSaid === undefined && !this.closing) {
      const message =
        this.lost !== undefined
          ? `lost the connection to the VM console (${this.lost})`
          : "the VM's websockify closed the connection without a close frame";
      this.stop({ code: 'VM_CONNECTION_LOST', message });
    }
    this.browser.resume();
    this.finishDown();
    this.finishIfAnswered();
  }

  // ---------------------------------------------------------------- browser → target

  private browserOnData(chunk: Buffer): void {
    this.stats.up += chunk.length;
    this.options.traffic.up += chunk.length;
    if (this.upBroken) return;
    // Answers to our pings are not activity: an idle console stays idle.
    const frames = this.up.dataFrames;
    this.forwardUp(chunk);
    if (this.up.dataFrames !== frames) this.stats.lastActivity = Date.now();
  }

  private forwardUp(chunk: Buffer): void {
    if (this.options.viewOnly !== undefined) return this.filterUp(chunk);
    let at = 0;
    while (at < chunk.length) {
      const from = at;
      try {
        at = this.up.advance(chunk, at, this.owedUp !== undefined);
      } catch (error) {
        return this.brokenUp(error);
      }
      if (!this.targetClosed) this.sendUp(from === 0 && at === chunk.length ? chunk : chunk.subarray(from, at));
      this.afterUpFrame();
    }
  }

  /** View-only: the browser's frames are unmasked and filtered; what may pass goes on in frames of ours. */
  private filterUp(chunk: Buffer): void {
    try {
      this.up.advance(chunk);
    } catch (error) {
      return this.brokenUp(error);
    }
    this.takeUpData();
    const frames = this.upFrames;
    this.upFrames = [];
    if (this.violation !== undefined) {
      const failure = toGatewayError(this.violation);
      this.stop({ code: failure.code, message: failure.message });
    } else if (!this.targetClosed) {
      for (const frame of frames) this.sendUp(frame);
    }
    this.afterUpFrame();
  }

  private filterPiece(viewOnly: ViewOnlyFilter, piece: Buffer): void {
    if (this.violation !== undefined) return;
    try {
      this.upData.push(viewOnly.filter(piece));
    } catch (error) {
      this.violation = error;
    }
  }

  private takeUpData(): void {
    const data = this.upData.filter((piece) => piece.length > 0);
    this.upData = [];
    if (data.length > 0) this.upFrames.push(encodeFrame(OPCODE.BINARY, data.length === 1 ? data[0]! : Buffer.concat(data), randomBytes(4)));
  }

  private browserControl(opcode: number, payload: Buffer): void {
    if (opcode === OPCODE.PONG) this.alive = true;
    if (opcode === OPCODE.CLOSE) this.browserSaidClose = true;
    if (this.options.viewOnly !== undefined) {
      this.takeUpData();
      this.upFrames.push(encodeFrame(opcode, payload, randomBytes(4)));
    }
  }

  /** After a piece of the browser's stream went on: its close frame, or ours now due. */
  private afterUpFrame(): void {
    if (this.browserSaidClose && !this.targetClosed) {
      // The browser's close frame went to the target: that is the target's close.
      this.targetClosed = true;
      this.owedUp = undefined;
      this.stop({ code: 'BROWSER_CLOSED', message: 'the browser closed the console' });
    }
    this.flushUp();
    this.finishIfAnswered();
  }

  private sendUp(bytes: Buffer): void {
    if (!this.target.destroyed && !this.target.write(bytes)) this.browser.pause();
  }

  private flushUp(): void {
    if (this.owedUp === undefined || this.targetClosed) return;
    if (this.options.viewOnly === undefined && !this.up.atBoundary) return;
    this.sendUp(this.owedUp);
    this.owedUp = undefined;
    this.targetClosed = true;
  }

  private brokenUp(error: unknown): void {
    const what = error instanceof Error ? error.message : String(error);
    // The browser's stream cannot be followed, so no close frame of ours can follow it either.
    this.upBroken = true;
    this.targetClosed = true;
    this.target.destroy();
    this.stop({ code: 'BROWSER_PROTOCOL_ERROR', message: `the browser sent a malformed WebSocket frame (${what})` });
  }

  // ---------------------------------------------------------------- the end

  /** Ends each connection whose close handshake is complete. */
  private finishIfAnswered(): void {
    if (this.browserClosed && this.browserSaidClose) this.browser.end();
    if (this.targetClosed && this.targetSaid !== undefined) this.target.end();
  }

  /** Peers that did not finish their frame in time: the browser still gets its close frame. */
  private force(): void {
    if (this.owedUp !== undefined && !this.targetClosed) this.target.destroy();
    this.finishDown();
    this.timer = setTimeout(() => {
      this.browser.destroy();
      this.target.destroy();
    }, CLOSE_ANSWER_MS);
    this.timer.unref();
  }
}
