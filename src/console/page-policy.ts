// The console page's security headers. The page holds a ticket in its URL until its script removes
// it, and turns keys into input on a VM: only the platform's own pages may frame it (CSP
// frame-ancestors, from FRAME_ANCESTORS or the allowed origins), it runs only its own files (no
// inline script, no eval), and it never sends a Referer.

/** Headers for GET /console; `frameAncestors` are CSP source expressions (origins, 'self', 'none', *). */
export function consolePageHeaders(frameAncestors: readonly string[]): Record<string, string> {
  const policy = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    // The console WebSocket goes back to this server (CSP3 lets 'self' cover ws: and wss: too, but
    // not every browser in the field implements that yet).
    "connect-src 'self' ws: wss:",
    "object-src 'none'",
    "base-uri 'none'",
    `frame-ancestors ${frameAncestors.join(' ')}`,
  ].join('; ');
  return {
    'Cache-Control': 'no-store',
    'Referrer-Policy': 'no-referrer',
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy': policy,
  };
}
