// A WebSocket client on a bare TCP socket, for the inputs a well-behaved library never sends:
// reserved opcodes, unmasked frames, invalid UTF-8, thousands of fragments, missing headers.
import { connect, type Socket } from 'node:net';

export interface RawResponse {
  /** Everything the server wrote before it closed the connection. */
  text: string;
  status: number | undefined;
}

/** Sends `request` as is and collects the answer until the server closes or `timeoutMs` passes. */
export function rawRequest(port: number, request: string | Buffer, timeoutMs = 10_000): Promise<RawResponse & { closedAfterMs: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = connect(port, '127.0.0.1', () => socket.write(request));
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      resolve({ text, status: statusOf(text), closedAfterMs: Date.now() - started });
    };
    const timer = setTimeout(done, timeoutMs);
    socket.on('data', (d) => chunks.push(d));
    socket.on('close', done);
    socket.on('error', done);
  });
}

function statusOf(text: string): number | undefined {
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(text);
  return match ? Number(match[1]) : undefined;
}

export function upgradeRequest(path: string, headers: Record<string, string> = {}): string {
  const all = {
    Host: '127.0.0.1',
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Version': '13',
    ...headers,
  };
  const lines = Object.entries(all)
    .filter(([, value]) => value !== '')
    .map(([name, value]) => `${name}: ${value}\r\n`);
  return `GET ${path} HTTP/1.1\r\n${lines.join('')}\r\n`;
}

export interface RawConsole {
  socket: Socket;
  /** The close frame the server sent (code and reason), once it arrives. */
  closed: Promise<{ code: number; reason: string }>;
}

/** Completes a WebSocket handshake on `path` and resolves once the server answered 101. */
export function openRawConsole(port: number, path: string): Promise<RawConsole> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(upgradeRequest(path)));
    let buffered = Buffer.alloc(0);
    let upgraded = false;
    let onClose: (close: { code: number; reason: string }) => void = () => {};
    const closed = new Promise<{ code: number; reason: string }>((r) => (onClose = r));
    socket.on('error', () => {});
    socket.on('close', () => (upgraded ? onClose({ code: 1006, reason: '' }) : reject(new Error('closed before the handshake'))));
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (!upgraded) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buffered.subarray(0, end).toString('latin1');
        if (!head.startsWith('HTTP/1.1 101')) return reject(new Error(`handshake refused: ${head.split('\r\n')[0]}`));
        upgraded = true;
        buffered = buffered.subarray(end + 4);
        resolve({ socket, closed });
      }
      const close = closeFrameIn(buffered);
      if (close !== undefined) onClose(close);
    });
  });
}

/** A client frame (masked unless told otherwise, RFC 6455 §5.3). */
export function frame(opcode: number, payload: Buffer, options: { fin?: boolean; mask?: boolean } = {}): Buffer {
  const { fin = true, mask = true } = options;
  const length = payload.length;
  const lengthBytes = length < 126 ? Buffer.from([length]) : length < 65536 ? Buffer.from([126, length >> 8, length & 0xff]) : Buffer.concat([Buffer.from([127]), u64(length)]);
  lengthBytes[0]! |= mask ? 0x80 : 0;
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const body = mask ? Buffer.from(payload.map((b, i) => b ^ key[i % 4]!)) : payload;
  return Buffer.concat([Buffer.from([(fin ? 0x80 : 0) | opcode]), lengthBytes, mask ? key : Buffer.alloc(0), body]);
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

/** The first close frame among the server's (unmasked) frames in `data`, if complete. */
function closeFrameIn(data: Buffer): { code: number; reason: string } | undefined {
  let offset = 0;
  while (offset + 2 <= data.length) {
    const opcode = data[offset]! & 0x0f;
    let length = data[offset + 1]! & 0x7f;
    let start = offset + 2;
    if (length === 126) {
      if (start + 2 > data.length) return undefined;
      length = data.readUInt16BE(start);
      start += 2;
    } else if (length === 127) {
      if (start + 8 > data.length) return undefined;
      length = Number(data.readBigUInt64BE(start));
      start += 8;
    }
    if (start + length > data.length) return undefined;
    if (opcode === 0x8) {
      const body = data.subarray(start, start + length);
      return { code: body.length >= 2 ? body.readUInt16BE(0) : 1005, reason: body.subarray(2).toString('utf8') };
    }
    offset = start + length;
  }
  return undefined;
}
