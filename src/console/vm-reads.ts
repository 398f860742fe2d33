// Reads from the VM's socket into buffers we own (net's `onread`), instead of Node allocating a
// fresh 64 KiB buffer for every read and the garbage collector freeing it again.
//
// Two kinds of buffer, both with HEADROOM bytes in front so a WebSocket frame header can be written
// right before the payload and the frame leaves in one write:
// - one SHARED buffer for every socket that is not streaming: whatever lands in it is copied out
//   before the next read anywhere, so it is never held and an idle console holds no buffer at all;
// - a private SLAB from a small pool while a socket streams (its last read filled the buffer): the
//   payload is written from it without a copy, and the same slab is read into again unless a write
//   still holds it, in which case a fresh one is handed out and the held one returns once the write
//   completed (SlabWrites, used by both pumps).
import type { Socket } from 'node:net';

/** Room for the longest server-to-client frame header (2 + 8 bytes). */
export const HEADROOM = 10;
const SHARED_SIZE = 16 * 1024;
// 1 MiB, not Node's 64 KiB: a sixteenth of the reads, wake-ups and writes per GiB streamed. In
// down-only A/B runs the gateway's CPU per GiB VM -> browser fell by a fifth against 256 KiB slabs
// (512 KiB: half of that; 2 MiB: worse, as loopback reads rarely fill it). A streaming console
// holds one slab, or two while a write still holds the last; parked behind a slow browser, only
// the one in its write queue.
const SLAB_SIZE = 1024 * 1024;
/** Slabs kept for reuse (8 MiB); more are allocated while more sockets stream at once. */
const POOL_MAX = 8;
/**
 * The read size while a socket's reads are stream data, before a pump takes them or where none
 * does: handshakes, and a screenshot's framebuffer update (megabytes, each read a buffer of its own).
 */
const STREAM_READ_SIZE = 256 * 1024;

export interface Slab {
  /** HEADROOM + SLAB_SIZE bytes. */
  readonly whole: Buffer;
  /** The part reads land in (after the headroom). */
  readonly view: Buffer;
}

const sharedWhole = Buffer.allocUnsafeSlow(HEADROOM + SHARED_SIZE);
export const SHARED_VIEW = sharedWhole.subarray(HEADROOM);
const pool: Slab[] = [];

function takeSlab(): Slab {
  const slab = pool.pop();
  if (slab !== undefined) return slab;
  const whole = Buffer.allocUnsafeSlow(HEADROOM + SLAB_SIZE);
  return { whole, view: whole.subarray(HEADROOM) };
}

function returnSlab(slab: Slab): void {
  if (pool.length < POOL_MAX) pool.push(slab);
}

/**
 * A pump's slabs for one VM socket whose bytes it writes to `out` without a copy: the slab the next
 * read lands in, and the slabs writes still hold, each back to the pool once the last of our writes
 * issued before it was held has completed (a socket completes its writes in order).
 */
export class SlabWrites {
  private slab: Slab | undefined;
  private issued = 0;
  private completed = 0;
  private readonly held: { slab: Slab; after: number }[] = [];

  constructor(
    private readonly reads: VmReads,
    private readonly out: Socket,
    /** Called after each of our writes completed (a pump resumes its reads here). */
    private readonly onWritten: () => void,
  ) {}

  /** The slab the read landed in, if it did: its bytes may be written from it without a copy. */
  slabOf(view: Buffer): Slab | undefined {
    return this.slab !== undefined && view === this.slab.view ? this.slab : undefined;
  }

  /** Writes to `out`, counted so the slabs the write refers to are held until it completed. */
  write(bytes: Buffer): boolean {
    this.issued++;
    return this.out.write(bytes, this.written);
  }

  /**
   * After a read's writes were issued: picks the buffer the next read lands in. A read that filled
   * its buffer means the VM is streaming: the next read goes to a slab (the same one unless a write
   * still holds it). Otherwise the shared one, as it is with `shared` (the pump is parked behind a
   * slow browser, or drops what it reads), so a console holds no slab it is not reading into.
   */
  afterRead(nread: number, view: Buffer, shared: boolean): void {
    const streaming = nread === view.length && !shared;
    const slab = this.slabOf(view);
    const queued = this.out.writableLength > 0;
    if (slab !== undefined && (queued || !streaming)) {
      if (queued) this.held.push({ slab, after: this.issued });
      else returnSlab(slab);
      this.slab = undefined;
    }
    if (streaming) this.slab ??= takeSlab();
    this.reads.next = streaming ? this.slab!.view : SHARED_VIEW;
  }

  private readonly written = (): void => {
    this.completed++;
    while (this.held.length > 0 && this.held[0]!.after <= this.completed) returnSlab(this.held.shift()!.slab);
    this.onWritten();
  };
}

/** What the pump does with a read: returns false to stop reading until it resumes the socket. */
export type ReadHandler = (nread: number, view: Buffer) => boolean;

/** The reading state of one VM socket: who gets its reads, and which buffer the next read uses. */
export class VmReads {
  /** The buffer the next read lands in; the pump moves it between SHARED_VIEW and its slabs. */
  next: Buffer = SHARED_VIEW;
  private handler: ReadHandler | undefined;
  private socket: Socket | undefined;

  /** The `onread` option for net.connect. */
  readonly onread = {
    buffer: () => this.next,
    callback: (nread: number, view: Buffer): boolean => (this.handler ?? this.streamRead)(nread, view),
  };

  /** Binds to the socket created with `onread` (needed before any read arrives). */
  bind(socket: Socket): void {
    this.socket = socket;
  }

  /**
   * Until a pump takes over, reads become ordinary stream data, so handshake code that
   * listens for 'data', pipes, pauses or unshifts works on this socket as on any other.
   */
  private readonly streamRead = (nread: number, view: Buffer): boolean => {
    // A buffer of its own is handed on whole; the shared one is copied out of.
    const chunk = view === SHARED_VIEW ? Buffer.from(view.subarray(0, nread)) : view.subarray(0, nread);
    // Streaming (the read filled its buffer): the next read gets a full-size buffer of its own.
    this.next = nread === view.length ? Buffer.allocUnsafe(STREAM_READ_SIZE) : SHARED_VIEW;
    return this.socket!.push(chunk);
  };

  /**
   * Hands every further read to `handler`, and returns what was read earlier and not consumed
   * (bytes a handshake pushed back, or that arrived before anyone listened).
   */
  take(handler: ReadHandler): Buffer | undefined {
    this.handler = handler;
    const early = this.socket!.readableLength > 0 ? (this.socket!.read() as Buffer | null) : null;
    return early ?? undefined;
  }
}

const readers = new WeakMap<Socket, VmReads>();

export function registerReads(socket: Socket, reads: VmReads): void {
  reads.bind(socket);
  readers.set(socket, reads);
}

/** The reading state of a socket made by dial(); every VM socket a pump is given is one. */
export function readsOf(socket: Socket): VmReads {
  const reads = readers.get(socket);
  if (reads === undefined) throw new Error('a pump was given a VM socket not made by dial()');
  return reads;
}
