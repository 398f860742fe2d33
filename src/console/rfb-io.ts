// Reading an RFB conversation a few bytes at a time, from a TCP socket or a WebSocket: the
// handshakes the gateway speaks itself (VNC authentication with the VM, security None with the
// browser, the screenshot client) need "the next n bytes", whatever the chunking. Once a handshake
// is done, `release()` detaches and hands back what was read ahead, so the byte pump starts exactly
// where the handshake stopped.
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';

export interface RfbIo {
  /** The next `n` bytes; rejects when the connection ends first. */
  read(n: number): Promise<Buffer>;
  write(bytes: Buffer): void;
  /** Stops reading; returns the bytes received but not yet read (a TCP socket keeps them too). */
  release(): Buffer;
}

/** Rejected reads: the peer went away in the middle of a handshake. */
export class RfbClosed extends Error {}

class ByteQueue {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    this.wake();
  }

  fail(error: Error): void {
    this.failure ??= error;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(this.failure);
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter !== undefined) return Promise.reject(new Error('one read at a time'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
      if (this.waiter !== undefined && this.failure !== undefined) this.fail(this.failure);
    });
  }

  drain(): Buffer {
    const all = Buffer.concat(this.chunks);
    this.chunks = [];
    this.size = 0;
    return all;
  }

  private wake(): void {
    const waiter = this.waiter;
    if (waiter === undefined || this.size < waiter.n) return;
    const all = this.drain();
    this.waiter = undefined;
    if (all.length > waiter.n) this.push(all.subarray(waiter.n));
    waiter.resolve(all.subarray(0, waiter.n));
  }
}

/**
 * An RfbIo over a connected TCP socket; `release()` leaves the socket paused, with any bytes read
 * ahead put back (unshift), for the pump to take over.
 */
export function socketIo(socket: Socket): RfbIo {
  const queue = new ByteQueue();
  const onData = (chunk: Buffer) => queue.push(chunk);
  const onEnd = () => queue.fail(new RfbClosed('the connection closed during the RFB handshake'));
  socket.on('data', onData);
  socket.on('close', onEnd);
  socket.on('end', onEnd);
  return {
    read: (n) => queue.read(n),
    write: (bytes) => void socket.write(bytes),
    release() {
      socket.pause();
      socket.off('data', onData);
      socket.off('close', onEnd);
      socket.off('end', onEnd);
      // Bytes read ahead go back into the socket, so the pump reads them first.
      const rest = queue.drain();
      if (rest.length > 0 && !socket.destroyed) socket.unshift(rest);
      return rest;
    },
  };
}

/** An RfbIo over an open WebSocket carrying RFB as binary messages. */
export function webSocketIo(ws: WebSocket): RfbIo {
  const queue = new ByteQueue();
  const onMessage = (data: Buffer | ArrayBuffer | Buffer[]) =>
    queue.push(Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data));
  const onClose = () => queue.fail(new RfbClosed('the connection closed during the RFB handshake'));
  ws.on('message', onMessage);
  ws.on('close', onClose);
  return {
    read: (n) => queue.read(n),
    write: (bytes) => ws.send(bytes, { binary: true }),
    release() {
      ws.off('message', onMessage);
      ws.off('close', onClose);
      return queue.drain();
    },
  };
}

export interface BoundOptions {
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** Ends the connection under the handshake, so a pending read rejects. */
  cancel(): void;
  /** What to throw when the deadline passes or the peer goes away mid-handshake. */
  timedOut(): Error;
  closed(): Error;
}

/**
 * Runs a handshake with a deadline and the caller's signal: on either, the connection is cancelled
 * and the handshake's error replaced by one that says what happened.
 */
export async function bounded<T>(run: () => Promise<T>, options: BoundOptions): Promise<T> {
  let why: 'timeout' | 'abort' | undefined;
  const stop = (reason: 'timeout' | 'abort') => {
    why ??= reason;
    options.cancel();
  };
  const timer = setTimeout(() => stop('timeout'), options.timeoutMs);
  const onAbort = () => stop('abort');
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    options.signal?.throwIfAborted();
    return await run();
  } catch (error) {
    if (why === 'abort') throw options.signal!.reason;
    if (why === 'timeout') throw options.timedOut();
    if (error instanceof RfbClosed) throw options.closed();
    throw error;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onAbort);
  }
}
