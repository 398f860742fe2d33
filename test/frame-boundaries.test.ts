// The frame tracker against frames encoded by ws (an independent encoder), fed in random chunks.
import { randomBytes, randomInt } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Receiver, Sender } from 'ws';
import { FrameBoundaries, FrameError, OPCODE, closePayload, encodeFrame, parseClose } from '../src/console/frame-boundaries.js';

interface Frame {
  opcode: number;
  fin: boolean;
  payload: Buffer;
  masked: boolean;
}

function encode(frame: Frame): Buffer {
  const parts = Sender.frame(frame.payload, {
    fin: frame.fin,
    opcode: frame.opcode,
    mask: frame.masked,
    readOnly: true, // masks a copy: the payload stays what the test expects
    rsv1: false,
    maskBuffer: randomBytes(4),
  } as unknown as Parameters<typeof Sender.frame>[1]);
  return Buffer.concat(parts);
}

/** Random frames: every length encoding, fragmented messages, control frames between fragments. */
function randomFrames(count: number, masked: boolean): Frame[] {
  const frames: Frame[] = [];
  const sizes = () => [0, 1, randomInt(2, 126), 125, 126, randomInt(127, 65536), 65535, 65536, randomInt(65537, 200_000)][randomInt(0, 9)]!;
  while (frames.length < count) {
    const kind = randomInt(0, 4);
    if (kind === 0) {
      frames.push({ opcode: [OPCODE.PING, OPCODE.PONG][randomInt(0, 2)]!, fin: true, payload: randomBytes(randomInt(0, 126)), masked });
    } else if (kind === 1) {
      // A fragmented message with a ping in the middle.
      frames.push({ opcode: OPCODE.BINARY, fin: false, payload: randomBytes(sizes()), masked });
      frames.push({ opcode: OPCODE.PING, fin: true, payload: randomBytes(4), masked });
      frames.push({ opcode: OPCODE.CONTINUATION, fin: true, payload: randomBytes(sizes()), masked });
    } else {
      frames.push({ opcode: OPCODE.BINARY, fin: true, payload: randomBytes(sizes()), masked });
    }
  }
  frames.push({ opcode: OPCODE.CLOSE, fin: true, payload: closePayload(1000, 'bye'), masked });
  return frames;
}

function randomChunks(stream: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let at = 0; at < stream.length; ) {
    // Mostly tiny cuts (split headers), sometimes large ones.
    const size = randomInt(0, 3) === 0 ? randomInt(1, 70_000) : randomInt(1, 20);
    chunks.push(stream.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

describe('following WebSocket frame boundaries', () => {
  for (const masked of [false, true]) {
    it(`finds every boundary of ${masked ? 'masked (browser)' : 'unmasked (server)'} frames in random chunks`, () => {
      for (let round = 0; round < 20; round++) {
        const frames = randomFrames(25, masked);
        const encoded = frames.map(encode);
        const expected: number[] = [];
        let offset = 0;
        for (const e of encoded) expected.push((offset += e.length));
        const controls: [number, Buffer][] = [];
        const tracker = new FrameBoundaries({ control: (opcode, payload) => controls.push([opcode, payload]) });
        const found: number[] = [];
        let base = 0;
        for (const chunk of randomChunks(Buffer.concat(encoded))) {
          let at = 0;
          while (at < chunk.length) {
            at = tracker.advance(chunk, at, true);
            if (tracker.atBoundary) found.push(base + at);
          }
          base += chunk.length;
        }
        expect(found).toEqual(expected);
        expect(controls).toEqual(frames.filter((f) => f.opcode >= OPCODE.CLOSE).map((f) => [f.opcode, f.payload]));
        expect(tracker.atBoundary).toBe(true);
      }
    });
  }

  it('hands data payloads over unmasked, whatever the chunking', () => {
    const frames = randomFrames(40, true);
    const pieces: Buffer[] = [];
    const tracker = new FrameBoundaries({ data: (piece) => pieces.push(piece), control: () => {} });
    for (const chunk of randomChunks(Buffer.concat(frames.map(encode)))) expect(tracker.advance(chunk)).toBe(chunk.length);
    const data = frames.filter((f) => f.opcode < OPCODE.CLOSE).map((f) => f.payload);
    expect(Buffer.concat(pieces).equals(Buffer.concat(data))).toBe(true);
  });

  it('leaves the bytes it follows untouched', () => {
    const stream = Buffer.concat(randomFrames(30, true).map(encode));
    const copy = Buffer.from(stream);
    const tracker = new FrameBoundaries({ control: () => {} });
    for (const chunk of randomChunks(stream)) tracker.advance(chunk);
    expect(stream.equals(copy)).toBe(true);
  });

  it('refuses headers no peer may send', () => {
    const huge = Buffer.from([0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 0]);
    expect(() => new FrameBoundaries().advance(huge)).toThrow(FrameError);
    expect(() => new FrameBoundaries().advance(Buffer.from([0x09, 0]))).toThrow(/fragmented control/);
    expect(() => new FrameBoundaries().advance(Buffer.from([0x88, 126, 0, 200]))).toThrow(/over 125/);
  });

  it('encodes close frames that a WebSocket peer reads back, masked or not', async () => {
    for (const mask of [undefined, randomBytes(4)]) {
      const receiver = new Receiver({ isServer: mask !== undefined });
      const closed = new Promise<[number, string]>((resolve) => receiver.on('conclude', (code: number, reason: Buffer) => resolve([code, reason.toString()])));
      receiver.write(encodeFrame(OPCODE.CLOSE, closePayload(4409, 'the console session was stopped'), mask));
      expect(await closed).toEqual([4409, 'the console session was stopped']);
    }
    expect(parseClose(closePayload(1001, 'drain'))).toEqual({ code: 1001, reason: 'drain' });
    expect(parseClose(Buffer.alloc(0))).toEqual({ code: 1005, reason: '' });
  });
});
