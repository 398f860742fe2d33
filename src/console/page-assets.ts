// The built console page (scripts/build-page.mjs → dist/page/): the HTML plus one hashed script
// and stylesheet, each with brotli and gzip twins. Held in memory (a few hundred KiB) and answered
// in the best encoding the browser accepts; hashed files are immutable, the HTML is never cached.
import { readFileSync, readdirSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, extname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// The same directory from src/console/ (tests) and dist/console/ (the built gateway).
export const PAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'page');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

/** A name the build gave a content hash: its bytes never change, so browsers may keep it forever. */
const HASHED = /^[a-z-]+-[A-Z0-9]{8}\.(js|css)$/;

export const IMMUTABLE = 'public, max-age=31536000, immutable';

type Encoding = 'br' | 'gzip' | 'identity';

interface Asset {
  type: string;
  bodies: Partial<Record<Encoding, Buffer>>;
}

export interface PageAssets {
  /** The page's HTML (answered with the caller's headers). */
  page: Asset;
  /** Hashed files by name. */
  files: Map<string, Asset>;
}

/** Loads dist/page/, or undefined when the page was not built (the module page is served then). */
export function loadPageAssets(dir = PAGE_DIR): PageAssets | undefined {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return undefined;
  }
  const load = (name: string): Asset => {
    const read = (suffix: string) => {
      try {
        return readFileSync(resolve(dir, name + suffix));
      } catch {
        return undefined;
      }
    };
    const bodies: Asset['bodies'] = { identity: read('')! };
    const br = read('.br');
    const gzip = read('.gz');
    if (br !== undefined) bodies.br = br;
    if (gzip !== undefined) bodies.gzip = gzip;
    return { type: TYPES[extname(name)]!, bodies };
  };
  if (!names.includes('console.html')) return undefined;
  const files = new Map<string, Asset>();
  for (const name of names) if (HASHED.test(name)) files.set(name, load(name));
  return { page: load('console.html'), files };
}

/**
 * The encoding to answer with: brotli, then gzip, then none, skipping any the browser refuses
 * with q=0. (Preference order is ours: every browser that offers br decodes it fastest.)
 */
export function chooseEncoding(acceptEncoding: string | undefined, available: Partial<Record<Encoding, Buffer>>): Encoding {
  const accepted = new Map<string, number>();
  for (const part of (acceptEncoding ?? '').split(',')) {
    const [name, ...params] = part.trim().toLowerCase().split(';');
    if (!name) continue;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    accepted.set(name, q === undefined ? 1 : Number(q.slice(2)) || 0);
  }
  const ok = (name: Encoding) => (accepted.get(name) ?? accepted.get('*') ?? 0) > 0;
  if (available.br !== undefined && ok('br')) return 'br';
  if (available.gzip !== undefined && ok('gzip')) return 'gzip';
  return 'identity';
}

/** Sends an asset in the chosen encoding (GET or HEAD; the caller has checked the method). */
export function sendAsset(req: IncomingMessage, res: ServerResponse, asset: Asset, headers: Record<string, string>): void {
  const encoding = chooseEncoding(req.headers['accept-encoding'], asset.bodies);
  const body = asset.bodies[encoding]!;
  res.writeHead(200, {
    ...headers,
    'Content-Type': asset.type,
    'Content-Length': body.length,
    Vary: 'Accept-Encoding',
    ...(encoding === 'identity' ? {} : { 'Content-Encoding': encoding }),
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}
