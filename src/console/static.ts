// Serves the console page: the built bundle (dist/page/, see page-assets.ts) when there is one,
// else static/ with noVNC (the @novnc/novnc package, ES modules only, so .js goes out as
// text/javascript) as separate modules. Files only: no directory listings, no path outside a root.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IMMUTABLE, loadPageAssets, sendAsset, type PageAssets } from './page-assets.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
};

export const STATIC_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'static');
// The package's "exports" points at core/rfb.js; its root is two levels up.
export const NOVNC_DIR = resolve(dirname(createRequire(import.meta.url).resolve('@novnc/novnc')), '..');


/**
 * Maps a URL path under `root` to a file path, or undefined for anything that is not a plain
 * relative path (encoded separators, `..`, NUL bytes, hidden files).
 */
export function safeJoin(root: string, urlPath: string): string | undefined {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return undefined;
  }
  if (decoded.includes('\0') || decoded.includes('\\')) return undefined;
  const parts = decoded.split('/').filter((p) => p !== '');
  if (parts.length === 0 || parts.some((p) => p === '..' || p === '.' || p.startsWith('.'))) return undefined;
  const full = join(root, ...parts);
  return full.startsWith(root + sep) ? full : undefined;
}

let built: PageAssets | undefined | null = null;
/** The built page, read once; undefined when dist/page/ is absent (a source checkout before `npm run build`). */
function builtPage(): PageAssets | undefined {
  if (built === null) built = loadPageAssets();
  return built;
}

/** Answers the built page and its hashed files; false when the path is not theirs. */
function serveBuilt(req: IncomingMessage, res: ServerResponse, path: string, pageHeaders: Record<string, string>): boolean {
  const assets = builtPage();
  if (assets === undefined) return false;
  const isPage = path === '/console' || path === '/console/';
  const asset = isPage ? assets.page : path.startsWith('/assets/') ? assets.files.get(path.slice('/assets/'.length)) : undefined;
  if (!isPage && !path.startsWith('/assets/')) return false;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('method not allowed\n');
  } else if (asset === undefined) {
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
  } else {
    sendAsset(req, res, asset, isPage ? pageHeaders : { 'Cache-Control': IMMUTABLE, 'X-Content-Type-Options': 'nosniff' });
  }
  return true;
}

/**
 * Answers GET/HEAD for /console, /assets/*, /static/* and /novnc/*; returns false when the path is
 * not ours. `pageHeaders` go with the console page itself (page-policy.ts).
 */
export async function serveStatic(req: IncomingMessage, res: ServerResponse, path: string, pageHeaders: Record<string, string>): Promise<boolean> {
  if (serveBuilt(req, res, path, pageHeaders)) return true;
  let file: string | undefined;
  let headers: Record<string, string>;
  if (path === '/console' || path === '/console/') {
    file = join(STATIC_DIR, 'console.html');
    headers = pageHeaders;
  } else if (path.startsWith('/static/')) {
    file = safeJoin(STATIC_DIR, path.slice('/static/'.length));
    headers = { 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff' };
  } else if (path.startsWith('/novnc/')) {
    const rest = path.slice('/novnc/'.length);
    // Only the library's code, not its docs or package metadata.
    file = rest.startsWith('core/') || rest.startsWith('vendor/') ? safeJoin(NOVNC_DIR, rest) : undefined;
    headers = { 'Cache-Control': 'public, max-age=3600', 'X-Content-Type-Options': 'nosniff' };
  } else {
    return false;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('method not allowed\n');
    return true;
  }
  const type = file === undefined ? undefined : TYPES[extname(file)];
  const info = file === undefined || type === undefined ? undefined : await stat(file).catch(() => undefined);
  if (file === undefined || type === undefined || info === undefined || !info.isFile()) {
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
    return true;
  }
  res.writeHead(200, { ...headers, 'Content-Type': type, 'Content-Length': info.size, 'Last-Modified': info.mtime.toUTCString() });
  if (req.method === 'HEAD') {
    res.end();
    return true;
  }
  const stream = createReadStream(file);
  stream.on('error', () => res.destroy());
  stream.pipe(res);
  return true;
}
