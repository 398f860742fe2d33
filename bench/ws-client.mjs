// The bench's WebSocket client: the stand-in for a browser, which in real life runs on another
// machine. On this 2-core box the client shares the cores with the proxy it measures, so it must
// cost as little as it can, or the client, not the proxy, sets the pace. `ws`'s client copies each
// frame's payload into one buffer (a second copy of every byte) and sets up a sender, a receiver
// and per-message state per connection; this one hands payloads out as slices of what the socket
// read into one shared buffer. Frames are masked with a fixed non-zero key, as a browser's random
// key would be (ws, and so the gateway, skips unmasking for an all-zero key), and the masked copy
// of a buffer sent again and again is kept, so the proxy unmasks every byte while the client does
// not mask each time. Every proxy is measured through this same client.
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const MASK = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
let lastPlain;
let lastMasked;

// One read buffer for every client socket: each read is consumed (counted, hashed or copied)
// before the next one lands, and the kernel copies into memory that stays in the cache, as the
// gateway's own reads do. Fresh buffers per read cost the client page faults and cache misses.
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/** A TCP connection whose reads go to `onRead(slice)`; the slice is valid during the call only. */
export function connectTcp({ host, port }, onRead) {
  return net.connect({ host, port, noDelay: true, onread: { buffer: READ_BUFFER, callback: (n, buf) => void onRead(buf.subarray(0, n)) } });
}

/** `buf` masked with MASK from the frame's first byte; the last result is reused for the same buffer. */
function masked(buf) {
  if (buf === lastPlain) return lastMasked;
  const out = Buffer.allocUnsafe(buf.length);
  for (let i = 0; i < buf.length; i++) out[i] = buf[i] ^ MASK[i & 3];
  if (buf.length >= 1024) { lastPlain = buf; lastMasked = out; }
  return out;
}

/**
 * Opens `url` offering the `binary` subprotocol. `onData(buf)` receives binary payload bytes in
 * order, as slices valid during the call only (frame boundaries are not kept; a console's byte
 * stream has none); `onClose(reason)` once, after the upgrade. Resolves to
 * { socket, send(buf, cb), terminate() }.
 */
export function connectWs(url, { onData, onClose }) {
  return new Promise((resolve, reject) => {
    const { hostname, port, pathname, search } = new URL(url);
    const key = randomBytes(16).toString('base64');
    const expected = createHash('sha1').update(key + GUID).digest('base64');
    let head = Buffer.alloc(0);
    let parse; // set once upgraded
    let closed = false;
    const close = (why) => {
      if (closed) return;
      closed = true;
      socket.destroy();
      if (parse) onClose(why);
      else reject(new Error(why));
    };
    const conn = {
      socket: undefined,
      send: (buf, cb) => {
        socket.cork();
        socket.write(frameHeader(0x2, buf.length));
        const ok = socket.write(masked(buf), cb);
        socket.uncork();
        return ok;
      },
      terminate: () => close('terminated'),
    };
    const upgrade = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) return head.length > 16 * 1024 ? close('response head too long') : undefined;
      const text = head.subarray(0, end).toString('latin1');
      if (!text.startsWith('HTTP/1.1 101 ')) return close(`${text.split('\r\n')[0]} instead of 101`);
      if (/\r\nsec-websocket-accept:\s*(\S+)/i.exec(text)?.[1] !== expected) return close('bad Sec-WebSocket-Accept');
      parse = frameParser(onData, (opcode, payload) => {
        if (opcode === 0x8) close(`closed ${payload.length >= 2 ? payload.readUInt16BE(0) : 1005} ${payload.subarray(2).toString()}`);
        else if (opcode === 0x9) socket.write(Buffer.concat([frameHeader(0xa, payload.length), masked(payload)]));
      });
      resolve(conn);
      const rest = head.subarray(end + 4);
      head = undefined;
      if (rest.length) parse(rest);
    };
    const socket = connectTcp({ host: hostname, port: Number(port) }, (chunk) => {
      try {
        if (parse) parse(chunk);
        else upgrade(chunk);
      } catch (e) {
        close(e.message);
      }
    });
    conn.socket = socket;
    socket.on('connect', () =>
      socket.write(`GET ${pathname}${search} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Protocol: binary\r\n\r\n`),
    );
    socket.on('error', (e) => close(e.message));
    socket.on('close', () => close('socket closed'));
  });
}

/** A client frame header (FIN set, masked with MASK). */
function frameHeader(opcode, length) {
  const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const h = Buffer.allocUnsafe(2 + extended + 4);
  MASK.copy(h, 2 + extended);
  h[0] = 0x80 | opcode;
  if (extended === 0) h[1] = 0x80 | length;
  else if (extended === 2) { h[1] = 0x80 | 126; h.writeUInt16BE(length, 2); }
  else { h[1] = 0x80 | 127; h.writeBigUInt64BE(BigInt(length), 2); }
  return h;
}

/** Parses unmasked server frames across reads; data payloads go out as slices, never copied. */
function frameParser(onData, onControl) {
  let pending = null; // a header split across reads
  let left = 0; // payload bytes still to come in the current frame
  let control = null; // a control frame's payload parts
  let opcode = 0;
  return (chunk) => {
    if (pending) { chunk = Buffer.concat([pending, chunk]); pending = null; }
    let i = 0;
    while (i < chunk.length) {
      if (left > 0) {
        const n = Math.min(left, chunk.length - i);
        const part = chunk.subarray(i, i + n);
        i += n;
        left -= n;
        if (control) {
          control.push(Buffer.from(part)); // the read buffer is reused
          if (left === 0) { onControl(opcode, Buffer.concat(control)); control = null; }
        } else onData(part);
        continue;
      }
      const len7 = chunk.length - i >= 2 ? chunk[i + 1] & 0x7f : 0;
      const size = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0);
      if (chunk.length - i < size) { pending = Buffer.from(chunk.subarray(i)); return; }
      if (chunk[i + 1] & 0x80) throw new Error('a server frame must not be masked');
      opcode = chunk[i] & 0x0f;
      left = len7 === 126 ? chunk.readUInt16BE(i + 2) : len7 === 127 ? Number(chunk.readBigUInt64BE(i + 2)) : len7;
      i += size;
      if (opcode >= 0x8) {
        control = [];
        if (left === 0) { onControl(opcode, Buffer.alloc(0)); control = null; }
      }
    }
  };
}
