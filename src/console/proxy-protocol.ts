// The PROXY protocol (v1 text, v2 binary) in front of the HTTP(S) server, for L4 balancers that
// cannot add X-Forwarded-For. Each connection must open with a header within the header timeout;
// its source address becomes the connection's peer (client-address.ts) and the bytes after it go
// to the HTTP server as if the connection had just arrived. The parsing is proxy-protocol-js's.
import type { Server as HttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import { V1ProxyProtocol, V2ProxyProtocol, IPv4ProxyAddress, IPv6ProxyAddress } from 'proxy-protocol-js';
import type { Logger } from 'pino';
import { setProxiedSource } from './client-address.js';

// haproxy.org/download/2.8/doc/proxy-protocol.txt §2.1: a v1 line is at most 107 bytes; §2.2: the
// v2 signature is 12 bytes, then version/command, family, and a 16-bit length.
const V1_MAX = 107;
const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const V2_FIXED = 16;
// Addresses and a few TLVs; anything longer is not a balancer talking.
const V2_MAX = V2_FIXED + 512;

/** A plain TCP server that strips the PROXY header of each connection and hands it to `http`. */
export function createProxyProtocolFront(http: HttpServer | TlsServer, options: { timeoutMs: number; log: Logger }): Server {
  return createServer((socket) => {
    socket.on('error', () => socket.destroy());
    const timer = setTimeout(() => socket.destroy(), options.timeoutMs);
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      let parsed: { source: string | undefined; length: number } | 'more';
      try {
        parsed = parseHeader(buffered);
      } catch (error) {
        options.log.info({ peer: socket.remoteAddress, problem: (error as Error).message }, 'connection without a valid PROXY protocol header dropped');
        clearTimeout(timer);
        return void socket.destroy();
      }
      if (parsed === 'more') return;
      clearTimeout(timer);
      socket.off('data', onData);
      // Paused, the bytes after the header stay buffered for the server to read (a flowing stream
      // with no listener would drop them); the HTTP parser or the TLS layer takes them from there.
      socket.pause();
      // LOCAL (the balancer's own health check) and UNKNOWN carry no client: the peer stands.
      if (parsed.source !== undefined) setProxiedSource(socket, parsed.source);
      const rest = buffered.subarray(parsed.length);
      if (rest.length > 0) socket.unshift(rest);
      http.emit('connection', socket);
      // The TLS layer reads the buffer itself (and takes over the handle); a resume here would
      // hand those bytes to no one.
      if (!(http instanceof TlsServer)) socket.resume();
    };
    socket.on('data', onData);
  });
}

/** The header at the start of `data`: its source address and length, or 'more' when incomplete. */
export function parseHeader(data: Buffer): { source: string | undefined; length: number } | 'more' {
  if (data.length >= 1 && data[0] === 0x0d) return parseV2(data);
  if (!'PROXY '.startsWith(data.subarray(0, 6).toString('latin1'))) throw new Error('no PROXY protocol signature');
  const end = data.indexOf('\r\n');
  if (end === -1) {
    if (data.length >= V1_MAX) throw new Error('PROXY v1 line longer than 107 bytes');
    return 'more';
  }
  const line = data.subarray(0, end + 2).toString('latin1');
  if (line.startsWith('PROXY UNKNOWN')) return { source: undefined, length: end + 2 };
  return { source: V1ProxyProtocol.parse(line).source.ipAddress, length: end + 2 };
}

function parseV2(data: Buffer): { source: string | undefined; length: number } | 'more' {
  const signature = data.subarray(0, V2_SIGNATURE.length);
  if (!V2_SIGNATURE.subarray(0, signature.length).equals(signature)) throw new Error('no PROXY protocol v2 signature');
  if (data.length < V2_FIXED) return 'more';
  const length = V2_FIXED + data.readUInt16BE(14);
  if (length > V2_MAX) throw new Error('PROXY v2 header too long');
  if (data.length < length) return 'more';
  const header = V2ProxyProtocol.parse(new Uint8Array(data.subarray(0, length)));
  // Command 0 is LOCAL: a connection the balancer made itself, no client behind it.
  if (header.command === 0) return { source: undefined, length };
  const address = header.proxyAddress;
  if (address instanceof IPv4ProxyAddress) return { source: address.sourceAddress.address.join('.'), length };
  if (address instanceof IPv6ProxyAddress) return { source: ipv6(address.sourceAddress.address), length };
  return { source: undefined, length };
}

function ipv6(bytes: readonly number[]): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':');
}
