// GET /console/config.json: what the console page needs to know about its embedder, delivered as a
// file (the page runs under `script-src 'self'`, so no inline script can carry it). The parent
// origins are where the page may post ticket requests and whose answers it accepts: the allowed
// origins when configured, else the gateway's own origin (a same-origin embedder). '*' is never
// listed: a ticket request must name its recipient.
import type { IncomingMessage } from 'node:http';
import type { Config } from '../config.js';

export interface PageConfig {
  parentOrigins: string[];
}

export function pageConfigOf(config: Pick<Config, 'allowedOrigins' | 'publicUrl'>, req: IncomingMessage): PageConfig {
  const listed = config.allowedOrigins.filter((o) => /^https?:\/\/[^/]+$/.test(o));
  if (listed.length > 0) return { parentOrigins: listed };
  const tls = (req.socket as { encrypted?: boolean }).encrypted === true;
  const own = config.publicUrl !== undefined ? new URL(config.publicUrl).origin : `${tls ? 'https' : 'http'}://${req.headers.host ?? 'localhost'}`;
  return { parentOrigins: [own] };
}
