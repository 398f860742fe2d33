// A small RFB 3.8 server (RFC 6143) for `console-gateway demo` and for tests: a scene that
// moves every second and reacts to clicks and keys, Raw encoding only.
import net from 'node:net';
import { createCipheriv, randomBytes, timingSafeEqual } from 'node:crypto';

export interface DemoVncServer {
  readonly port: number;
  readonly host: string;
  /** Stops listening and destroys every open client connection. */
  close(): Promise<void>;
}

export interface DemoVncOptions {
  host?: string;
  port?: number;
  /** When set, clients must pass VNC Authentication (security type 2); otherwise None (1). */
  password?: string;
  width?: number;
  height?: number;
  /** Where protocol problems are reported (a pino logger fits); silent by default. */
  log?: { warn(fields: object, message: string): void };
}

const NAME = 'console-gateway demo';
const MAX_CUT_TEXT = 1 << 20;

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
}

type Phase = 'version' | 'security' | 'auth' | 'init' | 'normal' | 'closing';
interface Rect { x: number; y: number; w: number; h: number }
interface PixelFormat { bigEndian: boolean; redShift: number; greenShift: number; blueShift: number }

interface Client {
  socket: net.Socket;
  phase: Phase;
  input: Buffer;
  challenge: Buffer;
  format: PixelFormat;
  /** The latest FramebufferUpdateRequest not yet answered. */
  pending: (Rect & { incremental: boolean }) | null;
  sentVersion: number;
  draining: boolean;
}

/** VNC Authentication response: DES-ECB of the challenge, keyed by the password with each byte bit-reversed. */
function vncAuthResponse(password: string, challenge: Buffer): Buffer {
  const key = Buffer.alloc(8);
  Buffer.from(password, 'latin1').copy(key, 0, 0, 8);
  for (let i = 0; i < 8; i++) {
    let b = key[i]!, r = 0;
    for (let bit = 0; bit < 8; bit++) { r = (r << 1) | (b & 1); b >>= 1; }
    key[i] = r;
  }
  // OpenSSL 3 moved single DES to the legacy provider; two-key 3DES with K1 = K2 computes
  // E(K, D(K, E(K, x))) = E(K, x), which is single DES and stays in the default provider.
  const cipher = createCipheriv('des-ede-ecb', Buffer.concat([key, key]), null).setAutoPadding(false);
  return Buffer.concat([cipher.update(challenge), cipher.final()]);
}

/** Starts listening (default 127.0.0.1, ephemeral port); resolves once the port is known. */
export async function startDemoVncServer(options: DemoVncOptions = {}): Promise<DemoVncServer> {
  const width = options.width ?? 640;
  const height = options.height ?? 400;
  const password = options.password;
  const log = options.log ?? { warn: () => {} };
  if (!(width >= 1 && width <= 0xffff && height >= 1 && height <= 0xffff)) {
    throw new RangeError(`demo VNC size must be 1..65535 on each side, got ${width}x${height}`);
  }
  // Fail at start, not in the middle of a handshake, if this OpenSSL lacks DES entirely.
  if (password !== undefined) vncAuthResponse(password, Buffer.alloc(16));
  const clients = new Set<Client>();

  // The scene, shared by all clients; `version` bumps on every visible change.
  let version = 0, seconds = 0, keyCount = 0, lastKey = 0;
  const dots: { x: number; y: number; mask: number }[] = [];
  const pixels = new Uint32Array(width * height);
  let renderedVersion = -1;

  function render(): Uint32Array {
    if (renderedVersion === version) return pixels;
    const fill = (x0: number, y0: number, w: number, h: number, rgb: number) => {
      for (let y = Math.max(0, y0); y < Math.min(height, y0 + h); y++) {
        pixels.fill(rgb, y * width + Math.max(0, x0), y * width + Math.min(width, x0 + w));
      }
    };
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        pixels[y * width + x] = (((x * 255) / width) << 16) | (((y * 255) / height) << 8) | 0x60;
      }
    }
    fill(0, 0, Math.round((width * ((seconds % 60) + 1)) / 60), 12, 0xf0f0f0); // clock bar
    fill(0, 16, width, 12, keyCount === 0 ? 0x202020 : Math.imul(lastKey, 2654435761) & 0xffffff); // last key
    for (let i = 0; i < keyCount % 64; i++) fill(4 + (i % 32) * 10, 32 + Math.floor(i / 32) * 10, 8, 8, 0xffff00);
    const dotColours = [0xff2020, 0x20ff20, 0x2020ff, 0xffffff];
    for (const d of dots) fill(d.x - 3, d.y - 3, 7, 7, dotColours[(d.mask & 1 ? 0 : d.mask & 2 ? 1 : d.mask & 4 ? 2 : 3)]!);
    renderedVersion = version;
    return pixels;
  }

  function encode(format: PixelFormat, r: Rect): Buffer {
    const src = render();
    const out = Buffer.allocUnsafe(r.w * r.h * 4);
    let o = 0;
    for (let y = r.y; y < r.y + r.h; y++) {
      for (let x = r.x; x < r.x + r.w; x++, o += 4) {
        const rgb = src[y * width + x]!;
        const v = (((rgb >>> 16) & 0xff) << format.redShift) | (((rgb >>> 8) & 0xff) << format.greenShift) |
          ((rgb & 0xff) << format.blueShift);
        if (format.bigEndian) out.writeUInt32BE(v >>> 0, o); else out.writeUInt32LE(v >>> 0, o);
      }
    }
    return out;
  }

  // Answers the pending request if allowed: not while the socket drains, and an incremental
  // request only once the scene has changed since the last frame this client got.
  function flush(c: Client): void {
    const req = c.pending;
    if (!req || c.draining || c.phase !== 'normal') return;
    if (req.incremental && c.sentVersion === version) return;
    c.pending = null;
    c.sentVersion = version;
    const x = Math.min(req.x, width), y = Math.min(req.y, height);
    const r = { x, y, w: Math.min(req.w, width - x), h: Math.min(req.h, height - y) };
    const empty = r.w === 0 || r.h === 0;
    const head = Buffer.alloc(empty ? 4 : 16);
    head.writeUInt16BE(empty ? 0 : 1, 2); // type 0, padding, number of rectangles
    if (!empty) {
      head.writeUInt16BE(r.x, 4); head.writeUInt16BE(r.y, 6); head.writeUInt16BE(r.w, 8); head.writeUInt16BE(r.h, 10);
      head.writeInt32BE(0, 12); // Raw encoding
    }
    if (!c.socket.write(empty ? head : Buffer.concat([head, encode(c.format, r)]))) {
      c.draining = true;
      c.socket.once('drain', () => { c.draining = false; flush(c); });
    }
  }

  function changed(): void {
    version++;
    for (const c of clients) flush(c);
  }

  /** Sends `head` then a length-prefixed reason (RFB 3.8 failure form) and ends the connection. */
  function refuse(c: Client, head: Buffer, reason: string): void {
    const text = Buffer.from(reason);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(text.length);
    stop(c);
    c.socket.end(Buffer.concat([head, len, text]));
  }

  /** Stops parsing this client: whatever it sends from now on is discarded. */
  function stop(c: Client): void {
    c.phase = 'closing';
    c.pending = null;
  }

  function serverInit(c: Client): void {
    const name = Buffer.from(NAME);
    const msg = Buffer.alloc(24 + name.length);
    msg.writeUInt16BE(width, 0); msg.writeUInt16BE(height, 2);
    // 32 bpp, depth 24, little-endian, true colour, max 255 each, shifts 16/8/0.
    Buffer.from([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]).copy(msg, 4);
    msg.writeUInt32BE(name.length, 20);
    name.copy(msg, 24);
    c.socket.write(msg);
  }

  /** Consumes one message from the head of the input; returns its length, or 0 if incomplete. */
  function step(c: Client): number {
    const b = c.input;
    switch (c.phase) {
      case 'version': {
        if (b.length < 12) return 0;
        if (b.toString('latin1', 0, 12) !== 'RFB 003.008\n') {
          refuse(c, Buffer.from([0]), 'only RFB 003.008 is supported'); // zero security types, then a reason
          return b.length;
        }
        c.socket.write(Buffer.from([1, password === undefined ? 1 : 2]));
        c.phase = 'security';
        return 12;
      }
      case 'security': {
        if (b.length < 1) return 0;
        const offered = password === undefined ? 1 : 2;
        if (b[0] !== offered) { refuse(c, u32(1), 'security type not offered'); return b.length; }
        if (offered === 1) {
          c.socket.write(Buffer.alloc(4)); // SecurityResult OK (RFB 3.8 sends it for None too)
          c.phase = 'init';
        } else {
          c.challenge = randomBytes(16);
          c.socket.write(c.challenge);
          c.phase = 'auth';
        }
        return 1;
      }
      case 'auth': {
        if (b.length < 16) return 0;
        if (!timingSafeEqual(b.subarray(0, 16), vncAuthResponse(password ?? '', c.challenge))) {
          refuse(c, u32(1), 'authentication failed');
          return b.length;
        }
        c.socket.write(Buffer.alloc(4));
        c.phase = 'init';
        return 16;
      }
      case 'init': {
        if (b.length < 1) return 0; // ClientInit's shared flag: every client shares the scene
        serverInit(c);
        c.phase = 'normal';
        return 1;
      }
      case 'normal':
        return clientMessage(c, b);
      case 'closing':
        return b.length;
    }
  }

  function clientMessage(c: Client, b: Buffer): number {
    switch (b[0]) {
      case 0: { // SetPixelFormat
        if (b.length < 20) return 0;
        const [bpp, , bigEndian, trueColour] = [b[4]!, b[5]!, b[6]!, b[7]!];
        const maxes = [b.readUInt16BE(8), b.readUInt16BE(10), b.readUInt16BE(12)];
        if (bpp !== 32 || !trueColour || maxes.some((m) => m !== 255) || [b[14]!, b[15]!, b[16]!].some((sh) => sh > 24)) {
          log.warn({ bpp, trueColour }, 'demo-vnc: unsupported pixel format; closing');
          stop(c);
          c.socket.end();
          return b.length;
        }
        c.format = { bigEndian: bigEndian !== 0, redShift: b[14]!, greenShift: b[15]!, blueShift: b[16]! };
        return 20;
      }
      case 2: { // SetEncodings: ignored, Raw is always used
        if (b.length < 4) return 0;
        const len = 4 + 4 * b.readUInt16BE(2);
        return b.length < len ? 0 : len;
      }
      case 3: { // FramebufferUpdateRequest
        if (b.length < 10) return 0;
        c.pending = { incremental: b[1] !== 0, x: b.readUInt16BE(2), y: b.readUInt16BE(4), w: b.readUInt16BE(6), h: b.readUInt16BE(8) };
        flush(c);
        return 10;
      }
      case 4: { // KeyEvent: count key presses, colour the band by the last keysym
        if (b.length < 8) return 0;
        if (b[1]) { keyCount++; lastKey = b.readUInt32BE(4); changed(); }
        return 8;
      }
      case 5: { // PointerEvent: a dot wherever a button goes down
        if (b.length < 6) return 0;
        if (b[1]) {
          dots.push({ mask: b[1], x: b.readUInt16BE(2), y: b.readUInt16BE(4) });
          if (dots.length > 64) dots.shift();
          changed();
        }
        return 6;
      }
      case 6: { // ClientCutText: echoed back as ServerCutText so the round trip is visible
        if (b.length < 8) return 0;
        const len = b.readUInt32BE(4);
        if (len > MAX_CUT_TEXT) {
          log.warn({ len }, 'demo-vnc: client cut text too long; closing');
          stop(c);
          c.socket.end();
          return b.length;
        }
        if (b.length < 8 + len) return 0;
        const echo = Buffer.from(b.subarray(0, 8 + len));
        echo[0] = 3;
        c.socket.write(echo);
        return 8 + len;
      }
      default: // unknown message: its length is unknown, so nothing after it can be parsed
        log.warn({ type: b[0] }, 'demo-vnc: unknown client message type; closing');
        stop(c);
        c.socket.end();
        return b.length;
    }
  }

  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    const c: Client = {
      socket, phase: 'version', input: Buffer.alloc(0), challenge: Buffer.alloc(0), pending: null, sentVersion: -1,
      draining: false, format: { bigEndian: false, redShift: 16, greenShift: 8, blueShift: 0 },
    };
    clients.add(c);
    socket.on('error', () => socket.destroy()); // a peer reset is normal; 'close' cleans up
    socket.on('close', () => clients.delete(c));
    socket.on('data', (chunk: Buffer) => {
      c.input = c.input.length === 0 ? chunk : Buffer.concat([c.input, chunk]);
      for (let n; c.input.length > 0 && (n = step(c)) > 0;) c.input = c.input.subarray(n);
    });
    socket.write('RFB 003.008\n');
  });

  const clock = setInterval(() => { seconds++; changed(); }, 1000);
  clock.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as net.AddressInfo;

  return {
    port: address.port,
    host: address.address,
    close: () => new Promise<void>((resolve) => {
      clearInterval(clock);
      for (const c of clients) c.socket.destroy();
      server.close(() => resolve());
    }),
  };
}
