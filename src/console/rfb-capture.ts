// One frame of a VM's screen as an RFB client (RFC 6143 §7.3-7.6): after the security handshake,
// ClientInit with the shared flag set (viewers stay connected), a 32-bit true-colour pixel format,
// Raw encoding only (the one every server must speak), one full non-incremental update request.
// Updates are read until every pixel was covered once; other server messages are skipped.
import { GatewayError } from '../errors.js';
import type { RfbIo } from './rfb-io.js';

export interface Frame {
  width: number;
  height: number;
  /** RGB, 3 bytes a pixel, rows top to bottom. */
  rgb: Uint8Array;
}

const RAW = 0;
const MAX_CUT_TEXT_BYTES = 1024 * 1024;

function failed(message: string): GatewayError {
  return new GatewayError('SCREENSHOT_FAILED', message);
}

/** 32 bpp, depth 24, little-endian, true colour, red at bit 16: bytes B, G, R, X on the wire. */
const SET_PIXEL_FORMAT = Buffer.from([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
const SET_ENCODINGS_RAW = Buffer.from([2, 0, 0, 1, 0, 0, 0, RAW]);

function updateRequest(width: number, height: number): Buffer {
  const b = Buffer.alloc(10);
  b[0] = 3; // FramebufferUpdateRequest, incremental = 0
  b.writeUInt16BE(width, 6);
  b.writeUInt16BE(height, 8);
  return b;
}

/**
 * Reads one full frame from `io`, whose security handshake is done. Refuses a screen of more than
 * `maxPixels` before asking for it.
 */
export async function captureFrame(io: RfbIo, maxPixels: number): Promise<Frame> {
  io.write(Buffer.from([1])); // ClientInit: shared
  const init = await io.read(24);
  const width = init.readUInt16BE(0);
  const height = init.readUInt16BE(2);
  await io.read(init.readUInt32BE(20)); // the desktop name
  if (width === 0 || height === 0) throw failed('the VM reports an empty screen');
  if (width * height > maxPixels) throw failed(`the VM's screen (${width}x${height}) is larger than screenshots allow (${maxPixels} pixels)`);
  io.write(Buffer.concat([SET_PIXEL_FORMAT, SET_ENCODINGS_RAW, updateRequest(width, height)]));

  const rgb = new Uint8Array(width * height * 3);
  let covered = 0;
  while (covered < width * height) {
    const type = (await io.read(1))[0]!;
    if (type === 0) {
      covered += await readUpdate(io, rgb, width, height);
      if (covered < width * height) io.write(updateRequest(width, height));
    } else {
      await skipMessage(io, type);
    }
  }
  return { width, height, rgb };
}

/** One FramebufferUpdate (type byte already read) into `rgb`; returns the pixels it covered. */
async function readUpdate(io: RfbIo, rgb: Uint8Array, width: number, height: number): Promise<number> {
  const rects = (await io.read(3)).readUInt16BE(1);
  let covered = 0;
  for (let r = 0; r < rects; r++) {
    const head = await io.read(12);
    const [x, y, w, h] = [head.readUInt16BE(0), head.readUInt16BE(2), head.readUInt16BE(4), head.readUInt16BE(6)];
    const encoding = head.readInt32BE(8);
    if (encoding !== RAW) throw failed(`the VM sent encoding ${encoding} though only Raw was asked for`);
    if (x + w > width || y + h > height) throw failed('the VM sent a rectangle outside its screen');
    const pixels = await io.read(w * h * 4);
    for (let row = 0; row < h; row++) {
      let out = ((y + row) * width + x) * 3;
      let at = row * w * 4;
      for (let col = 0; col < w; col++, at += 4) {
        rgb[out++] = pixels[at + 2]!;
        rgb[out++] = pixels[at + 1]!;
        rgb[out++] = pixels[at]!;
      }
    }
    covered += w * h;
  }
  return covered;
}

async function skipMessage(io: RfbIo, type: number): Promise<void> {
  switch (type) {
    case 1: { // SetColourMapEntries
      const head = await io.read(5);
      await io.read(head.readUInt16BE(3) * 6);
      return;
    }
    case 2: // Bell
      return;
    case 3: { // ServerCutText
      const length = (await io.read(7)).readUInt32BE(3);
      if (length > MAX_CUT_TEXT_BYTES) throw failed('the VM sent clipboard text over 1 MiB');
      await io.read(length);
      return;
    }
    default:
      throw failed(`the VM sent an RFB message the screenshot client does not know (type ${type})`);
  }
}

/**
 * Scales `frame` down to `maxWidth` (aspect kept) by averaging each target pixel's source box,
 * which keeps thin lines and text legible in thumbnails. A frame no wider is returned as it is.
 */
export function scaleDown(frame: Frame, maxWidth: number): Frame {
  if (frame.width <= maxWidth) return frame;
  const width = maxWidth;
  const height = Math.max(1, Math.round((frame.height * maxWidth) / frame.width));
  const rgb = new Uint8Array(width * height * 3);
  const sx = frame.width / width;
  const sy = frame.height / height;
  for (let y = 0; y < height; y++) {
    const y0 = Math.floor(y * sy);
    const y1 = Math.max(y0 + 1, Math.floor((y + 1) * sy));
    for (let x = 0; x < width; x++) {
      const x0 = Math.floor(x * sx);
      const x1 = Math.max(x0 + 1, Math.floor((x + 1) * sx));
      let r = 0, g = 0, b = 0;
      for (let yy = y0; yy < y1; yy++) {
        for (let xx = x0, at = (yy * frame.width + x0) * 3; xx < x1; xx++, at += 3) {
          r += frame.rgb[at]!;
          g += frame.rgb[at + 1]!;
          b += frame.rgb[at + 2]!;
        }
      }
      const n = (y1 - y0) * (x1 - x0);
      const out = (y * width + x) * 3;
      rgb[out] = Math.round(r / n);
      rgb[out + 1] = Math.round(g / n);
      rgb[out + 2] = Math.round(b / n);
    }
  }
  return { width, height, rgb };
}
