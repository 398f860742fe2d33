// Every failure the gateway can report, declared once with its HTTP status, WebSocket close code
// (README "What the browser sees") and log level. Callers branch on `code`, never on message text.
// Messages are shown to people (the console page prints the close reason), so they must never hold
// a ticket, a token, a URL query or a secret.

export const CATALOGUE = {
  BAD_REQUEST: { status: 400, close: 1008, level: 'info' },
  UNAUTHORIZED: { status: 401, close: 1008, level: 'warn' },
  NOT_FOUND: { status: 404, close: 1008, level: 'info' },
  METHOD_NOT_ALLOWED: { status: 405, close: 1008, level: 'info' },
  PAYLOAD_TOO_LARGE: { status: 413, close: 1009, level: 'info' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, close: 1008, level: 'info' },
  CONFLICT: { status: 409, close: 1008, level: 'info' },
  CONTROL_DISABLED: { status: 503, close: 1008, level: 'info' },
  TICKET_MISSING: { status: 400, close: 4400, level: 'info' },
  TICKET_INVALID: { status: 401, close: 4401, level: 'warn' },
  TICKET_EXPIRED: { status: 401, close: 4401, level: 'info' },
  TICKET_USED: { status: 401, close: 4401, level: 'warn' },
  ORIGIN_FORBIDDEN: { status: 403, close: 4403, level: 'warn' },
  TARGET_FORBIDDEN: { status: 403, close: 4403, level: 'warn' },
  SESSION_NOT_FOUND: { status: 404, close: 4404, level: 'info' },
  SESSION_ENDED: { status: 409, close: 4409, level: 'info' },
  CONSOLE_TAKEN_OVER: { status: 409, close: 4409, level: 'info' },
  CONSOLE_IN_EXCLUSIVE_USE: { status: 409, close: 4409, level: 'info' },
  CONSOLE_KICKED: { status: 409, close: 4409, level: 'info' },
  WAIT_TIMEOUT: { status: 504, close: 1013, level: 'warn' },
  CAPACITY: { status: 503, close: 1013, level: 'warn' },
  CLIENT_CAPACITY: { status: 429, close: 1013, level: 'warn' },
  SESSION_CAPACITY: { status: 429, close: 1013, level: 'info' },
  THROTTLED: { status: 429, close: 1013, level: 'warn' },
  PORTS_EXHAUSTED: { status: 503, close: 1013, level: 'warn' },
  TARGET_UNRESOLVABLE: { status: 422, close: 4502, level: 'warn' },
  DIAL_FAILED: { status: 502, close: 4502, level: 'warn' },
  VM_AUTH_FAILED: { status: 502, close: 4502, level: 'warn' },
  SCREENSHOT_FAILED: { status: 502, close: 4502, level: 'warn' },
  SCREENSHOT_TIMEOUT: { status: 504, close: 1013, level: 'warn' },
  CREDENTIALS_UNAVAILABLE: { status: 500, close: 1011, level: 'error' },
  IDLE_TIMEOUT: { status: 408, close: 4408, level: 'info' },
  MAX_DURATION: { status: 408, close: 4408, level: 'info' },
  // How a live console ends (never an HTTP answer; the status is for the catalogue's shape only).
  VM_CLOSED: { status: 502, close: 1000, level: 'info' },
  VM_CONNECTION_LOST: { status: 502, close: 4502, level: 'warn' },
  BROWSER_CLOSED: { status: 499, close: 1000, level: 'info' },
  BROWSER_UNRESPONSIVE: { status: 408, close: 4408, level: 'info' },
  VIEW_ONLY_VIOLATION: { status: 403, close: 1008, level: 'warn' },
  // The browser's own frames broke the protocol (RFC 6455 §7.4.1); words in browserFrameError.
  BROWSER_PROTOCOL_ERROR: { status: 400, close: 1002, level: 'info' },
  BROWSER_TEXT_FRAME: { status: 400, close: 1003, level: 'info' },
  BROWSER_INVALID_UTF8: { status: 400, close: 1007, level: 'info' },
  BROWSER_TOO_FRAGMENTED: { status: 400, close: 1008, level: 'info' },
  BROWSER_FRAME_TOO_LARGE: { status: 413, close: 1009, level: 'info' },
  SHUTTING_DOWN: { status: 503, close: 1001, level: 'info' },
  // Transient: 1013 "try again later" (RFC 6455 §7.4.1), so the page can offer a retry.
  DATABASE_UNAVAILABLE: { status: 503, close: 1013, level: 'error' },
  INTERNAL: { status: 500, close: 1011, level: 'error' },
} as const satisfies Record<string, { status: number; close: number; level: 'info' | 'warn' | 'error' }>;

export type ErrorCode = keyof typeof CATALOGUE;

export class GatewayError extends Error {
  override readonly name = 'GatewayError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get status(): number {
    return CATALOGUE[this.code].status;
  }

  get closeCode(): number {
    return CATALOGUE[this.code].close;
  }

  get level(): 'info' | 'warn' | 'error' {
    return CATALOGUE[this.code].level;
  }
}

/** Wraps anything thrown into a GatewayError; foreign errors keep their original on `cause`. */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) return error;
  return new GatewayError('INTERNAL', 'internal error in the gateway', { cause: error });
}

// RFC 6455 §5.5: a close frame body is at most 125 bytes, 2 of them the code.
const MAX_REASON_BYTES = 123;

/** Truncates a close reason to what fits in a close frame without splitting a UTF-8 sequence. */
export function closeReason(message: string): string {
  if (Buffer.byteLength(message) <= MAX_REASON_BYTES) return message;
  let out = '';
  for (const ch of message) {
    if (Buffer.byteLength(out + ch + '…') > MAX_REASON_BYTES) break;
    out += ch;
  }
  return out + '…';
}

/**
 * The words for a close the WebSocket library makes on its own when a browser frame breaks the
 * protocol: it sends the code alone, and a page can say nothing useful about an empty reason.
 * `maxMessageKiB` is the size limit the server enforces. Undefined for any other code.
 */
export function browserFrameError(closeCode: number, maxMessageKiB: number): GatewayError | undefined {
  switch (closeCode) {
    case 1002:
      return new GatewayError('BROWSER_PROTOCOL_ERROR', 'the browser sent a malformed WebSocket frame; reload the page');
    case 1003:
      return new GatewayError('BROWSER_TEXT_FRAME', 'text frames are not supported; the console speaks binary RFB');
    case 1007:
      return new GatewayError('BROWSER_INVALID_UTF8', 'the browser sent text that is not valid UTF-8; reload the page');
    case 1008:
      return new GatewayError('BROWSER_TOO_FRAGMENTED', 'the browser split a message into too many fragments; reload the page');
    case 1009:
      return new GatewayError('BROWSER_FRAME_TOO_LARGE', `the browser sent a message over ${maxMessageKiB} KiB; console input is small, reload the page`);
    default:
      return undefined;
  }
}
