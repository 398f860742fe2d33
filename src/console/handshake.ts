// The browser's side of the handshake, before anything async: is it a well-formed upgrade on our
// path (RFC 6455 §4.2.1), from an allowed origin, with a ticket, and which subprotocol to answer.
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Config } from '../config.js';
import { GatewayError } from '../errors.js';

export function checkOrigin(req: IncomingMessage, config: Config): void {
  const origin = req.headers.origin;
  // A non-browser client sends no Origin; its ticket is its only credential (README, ALLOWED_ORIGINS).
  if (origin === undefined) return;
  const allowed =
    config.allowedOrigins.length > 0
      ? config.allowedOrigins
      : [config.publicUrl !== undefined ? new URL(config.publicUrl).origin : `${isTls(req) ? 'https' : 'http'}://${req.headers.host}`];
  if (allowed.includes('*') || allowed.includes(origin)) return;
  throw new GatewayError('ORIGIN_FORBIDDEN', 'this page is not allowed to open consoles here (origin not in ALLOWED_ORIGINS)');
}

function isTls(req: IncomingMessage): boolean {
  return (req.socket as { encrypted?: boolean }).encrypted === true;
}

/** The ticket from `ticket=`, `token=` (websockify compatibility) or a `ticket.<T>` subprotocol. */
export function ticketOf(req: IncomingMessage): string | undefined {
  const query = new URL(req.url ?? '/', 'http://gateway').searchParams;
  const fromQuery = query.get('ticket') ?? query.get('token');
  if (fromQuery) return fromQuery;
  const offered = req.headers['sec-websocket-protocol']?.split(',').map((p) => p.trim());
  return offered?.find((p) => p.startsWith('ticket.'))?.slice('ticket.'.length) || undefined;
}

/** noVNC offers no subprotocol by default; answer 'binary' only when offered (Chromium drops a mismatch). */
export function selectProtocol(offered: Set<string>): string | false {
  if (offered.has('binary')) return 'binary';
  // A client that offered only its ticket must get one of its own values back or it fails the
  // connection; echoing it returns the ticket to the client that sent it, nowhere else.
  return [...offered][0] ?? false;
}

export function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

// RFC 6455 §4.2.1: what a server must check before it may answer 101.
export function handshakeProblem(req: IncomingMessage): string | undefined {
  if (req.method !== 'GET') return 'WebSocket upgrades must use GET';
  if (!req.headers.host) return 'missing Host header';
  if (req.headers.upgrade?.toLowerCase() !== 'websocket') return 'Upgrade header must be websocket';
  const key = req.headers['sec-websocket-key'];
  if (key === undefined || !/^[+/0-9A-Za-z]{22}==$/.test(key)) return 'missing or invalid Sec-WebSocket-Key';
  const version = req.headers['sec-websocket-version'];
  if (version !== '13' && version !== '8') return 'unsupported Sec-WebSocket-Version (use 13)';
  return undefined;
}

export function writeHttpError(socket: Duplex, status: number, message: string): void {
  const reason = STATUS_CODES[status] ?? 'Bad Request';
  const body = `${message}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/**
 * The answer to a request Node could not parse ('clientError'): the status HTTP names for the
 * problem, so balancers and access logs read it right (RFC 6585 §5 for 431, RFC 9110 for 408).
 */
export function clientErrorAnswer(error: NodeJS.ErrnoException): { status: number; message: string } {
  if (error.code === 'HPE_HEADER_OVERFLOW') return { status: 431, message: 'request headers too large' };
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') return { status: 408, message: 'request headers not received in time' };
  return { status: 400, message: 'malformed HTTP request' };
}
