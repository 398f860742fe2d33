// GET /console/config.json: what the console page needs to know about its embedder, delivered as a
// file (the page runs under `script-src 'self'`, so no inline script can carry it). The parent
// origins are where the page may post ticket requests and whose answers it accepts: the origins of
// FRAME_ANCESTORS (which defaults to ALLOWED_ORIGINS, else 'self'), with 'self' as the gateway's
// own origin. '*' and 'none' name no origin: a ticket request must name its recipient.
import type { IncomingMessage } from 'node:http';
import type { Config } from '../config.js';

export interface PageConfig {
  parentOrigins: string[];
}

export function pageConfigOf(config: Pick<Config, 'edge' | 'publicUrl'>, req: IncomingMessage): PageConfig {
  const tls = (req.socket as { encrypted?: boolean }).encrypted === true;
  const own = config.publicUrl !== undefined ? new URL(config.publicUrl).origin : `${tls ? 'https' : 'http'}://${req.headers.host ?? 'localhost'}`;
  const origins = config.edge.frameAncestors.flatMap((source) => (source === "'self'" ? [own] : /^https?:\/\/[^/*]+$/.test(source) ? [source] : []));
  return { parentOrigins: [...new Set(origins)] };
}
