// Follows the frame boundaries of one direction of a WebSocket byte stream (RFC 6455 §5.2) by
// reading frame headers only: FIN, opcode, mask bit and payload length. Payloads are skipped, never
// copied or unmasked, except control frames (≤ 125 bytes, so the pump can see a close or a pong)
// and, when a `data` listener is given, data payloads (a view-only console filters them).
// Headers may arrive split across chunks at any byte; lengths may be 7, 16 or 64 bits.

export const OPCODE = { CONTINUATION: 0x0, TEXT: 0x1, BINARY: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xa } as const;

export class FrameError extends Error {
  override readonly name = 'FrameError';
}

export interface FrameListener {
  /** A whole control frame (close, ping or pong) with its payload, unmasked. */
  control?(opcode: number, payload: Buffer): void;
  /** A piece of a data frame's payload, unmasked (a copy); only where payloads must be read. */
  data?(piece: Buffer): void;
}

const MAX_HEADER = 14;
const MAX_CONTROL_PAYLOAD = 125;
// 2^53: the largest length a JavaScript number holds exactly.
const MAX_HIGH_WORD = 0x1fffff;

export class FrameBoundaries {
  private readonly header = Buffer.alloc(MAX_HEADER);
  /** Header bytes of the next frame gathered so far (only when a header spans chunks). */
  private headerHave = 0;
  /** Payload bytes of the current frame still to come; -1 between frames. */
  private remaining = -1;
  private opcode = 0;
  private masked = false;
  private readonly mask = Buffer.alloc(4);
  private maskOffset = 0;
  private control: Buffer[] = [];
  /** Data frames (not ping, pong or close) whose header has been read: activity, for idle limits. */
  dataFrames = 0;

  constructor(private readonly listener: FrameListener = {}) {}

  /** True between frames: a frame of our own may be written to this stream now. */
  get atBoundary(): boolean {
    return this.remaining < 0 && this.headerHave === 0;
  }

  /** Payload bytes the frame in progress still needs (0 between frames); undefined mid-header. */
  get unfinished(): number | undefined {
    if (this.headerHave > 0) return undefined;
    return Math.max(this.remaining, 0);
  }

  /**
   * Follows `chunk` from `start` to its end, or with `untilBoundary` only to the end of the first
   * frame that ends in it. Returns the offset where it stopped. Throws FrameError on a header no
   * WebSocket peer may send; the stream cannot be followed after that.
   */
  advance(chunk: Buffer, start = 0, untilBoundary = false): number {
    let at = start;
    while (at < chunk.length) {
      if (this.remaining < 0) {
        at = this.readHeader(chunk, at);
      } else {
        const take = Math.min(this.remaining, chunk.length - at);
        if (take > 0) this.payload(chunk, at, take);
        at += take;
        this.remaining -= take;
      }
      if (this.remaining === 0) {
        this.endFrame();
        if (untilBoundary) return at;
      }
    }
    return at;
  }

  /** Reads (the rest of) a header from `chunk` at `at`; returns the offset after what it used. */
  private readHeader(chunk: Buffer, at: number): number {
    // Common case: the whole header is in this chunk; read it in place.
    if (this.headerHave === 0 && chunk.length - at >= MAX_HEADER) return at + this.parse(chunk, at);
    const want = Math.min(MAX_HEADER - this.headerHave, chunk.length - at);
    chunk.copy(this.header, this.headerHave, at, at + want);
    const gathered = this.headerHave + want;
    const size = gathered < 2 ? undefined : headerSize(this.header, 0);
    if (size === undefined || gathered < size) {
      this.headerHave = gathered;
      return at + want;
    }
    const used = size - this.headerHave;
    this.headerHave = 0;
    this.parse(this.header, 0);
    return at + used;
  }

  /** Parses a complete header at `b[at]`; returns its size. */
  private parse(b: Buffer, at: number): number {
    const size = headerSize(b, at);
    const first = b[at]!;
    const second = b[at + 1]!;
    const short = second & 0x7f;
    let length = short;
    if (short === 126) length = b.readUInt16BE(at + 2);
    else if (short === 127) {
      const high = b.readUInt32BE(at + 2);
      if (high > MAX_HIGH_WORD) throw new FrameError('frame length beyond 2^53 bytes');
      length = high * 2 ** 32 + b.readUInt32BE(at + 6);
    }
    this.opcode = first & 0x0f;
    this.masked = (second & 0x80) !== 0;
    if (this.opcode < OPCODE.CLOSE) this.dataFrames++;
    else {
      if ((first & 0x80) === 0) throw new FrameError('fragmented control frame');
      if (length > MAX_CONTROL_PAYLOAD) throw new FrameError('control frame over 125 bytes');
    }
    if (this.masked) b.copy(this.mask, 0, at + size - 4, at + size);
    this.maskOffset = 0;
    this.remaining = length;
    return size;
  }

  private payload(chunk: Buffer, at: number, take: number): void {
    const isControl = this.opcode >= OPCODE.CLOSE;
    if (isControl ? this.listener.control === undefined : this.listener.data === undefined) return;
    const piece = Buffer.from(chunk.subarray(at, at + take));
    if (this.masked) {
      for (let i = 0; i < piece.length; i++) piece[i]! ^= this.mask[(this.maskOffset + i) & 3]!;
      this.maskOffset = (this.maskOffset + piece.length) & 3;
    }
    if (isControl) this.control.push(piece);
    else this.listener.data!(piece);
  }

  private endFrame(): void {
    this.remaining = -1;
    if (this.opcode >= OPCODE.CLOSE && this.listener.control !== undefined) {
      const payload = this.control.length === 1 ? this.control[0]! : Buffer.concat(this.control);
      this.control = [];
      this.listener.control(this.opcode, payload);
    }
  }
}

/** The size of the header starting at `b[at]`, from its first two bytes. */
function headerSize(b: Buffer, at: number): number {
  const second = b[at + 1]!;
  const short = second & 0x7f;
  return 2 + (short === 126 ? 2 : short === 127 ? 8 : 0) + ((second & 0x80) !== 0 ? 4 : 0);
}

/** A whole frame (FIN set) with `payload`, masked with a fresh key when `mask` is given. */
export function encodeFrame(opcode: number, payload: Buffer, mask?: Buffer): Buffer {
  const length = payload.length;
  const lengthBytes = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const head = 2 + lengthBytes + (mask !== undefined ? 4 : 0);
  const frame = Buffer.allocUnsafe(head + length);
  frame[0] = 0x80 | opcode;
  frame[1] = (mask !== undefined ? 0x80 : 0) | (lengthBytes === 0 ? length : lengthBytes === 2 ? 126 : 127);
  if (lengthBytes === 2) frame.writeUInt16BE(length, 2);
  else if (lengthBytes === 8) {
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  if (mask === undefined) {
    payload.copy(frame, head);
    return frame;
  }
  mask.copy(frame, head - 4);
  for (let i = 0; i < length; i++) frame[head + i] = payload[i]! ^ mask[i & 3]!;
  return frame;
}

/** A close frame's payload: the code, then the reason in UTF-8 (the caller keeps it ≤ 123 bytes). */
export function closePayload(code: number, reason: string): Buffer {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2);
  return payload;
}

/** The code and reason of a close frame's payload (1005 when it carries no code, as browsers say). */
export function parseClose(payload: Buffer): { code: number; reason: string } {
  if (payload.length < 2) return { code: 1005, reason: '' };
  return { code: payload.readUInt16BE(0), reason: payload.subarray(2).toString('utf8') };
}
