// The control plane over HTTP (README "HTTP surface"): bearer-token auth with a constant-time
// compare, JSON in and out, and a clear 4xx for every bad input.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { databaseUnavailable, isDatabaseUnavailable } from '../db/failures.js';
import { GatewayError } from '../errors.js';
import type { Screenshots } from './screenshot.js';
import { closeConsolesOp, commitTargetOp, createSessionOp, getSessionOp, mintTicketOp, requireId, stopSessionOp, type ControlDeps } from './control.js';
import { allocatePortOp, poolOp, releasePortOp } from './port-ops.js';

const MAX_BODY_BYTES = 16 * 1024;

function sameToken(given: string, expected: string): boolean {
  // Hash first so the compare is constant-time whatever the lengths.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

function authorize(req: IncomingMessage, token: string | undefined): void {
  if (token === undefined) throw new GatewayError('CONTROL_DISABLED', 'the control API is disabled: set CONTROL_TOKEN');
  const header = req.headers.authorization ?? '';
  const given = header.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : '';
  if (given === '' || !sameToken(given, token)) throw new GatewayError('UNAUTHORIZED', 'missing or wrong bearer token');
}

async function readJson(req: IncomingMessage, required: boolean): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new GatewayError('PAYLOAD_TOO_LARGE', `the body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) {
    if (required) throw new GatewayError('BAD_REQUEST', 'a JSON body is required');
    return undefined;
  }
  if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
    throw new GatewayError('UNSUPPORTED_MEDIA_TYPE', 'send the body as application/json');
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new GatewayError('BAD_REQUEST', 'the body is not valid JSON');
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
  res.end(text);
}

export interface ApiDeps extends ControlDeps {
  publicUrl(req: IncomingMessage): string;
  screenshots?: Screenshots;
}

const MAX_SCREENSHOT_WIDTH = 4096;

/** `?maxWidth=N`: a whole number of pixels, 16 to 4096; undefined = the screen's own width. */
function maxWidthOf(req: IncomingMessage): number | undefined {
  const raw = new URL(req.url ?? '/', 'http://localhost').searchParams.get('maxWidth');
  if (raw === null) return undefined;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < 16 || n > MAX_SCREENSHOT_WIDTH) throw new GatewayError('BAD_REQUEST', `maxWidth must be a whole number between 16 and ${MAX_SCREENSHOT_WIDTH}`);
  return n;
}

async function sendScreenshot(deps: ApiDeps, req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
  if (deps.screenshots === undefined) throw new GatewayError('CONTROL_DISABLED', 'screenshots are taken by serve only');
  const png = await deps.screenshots.take(requireId(id), maxWidthOf(req));
  res.writeHead(200, { 'Content-Type': 'image/png', 'Content-Length': png.byteLength, 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' });
  res.end(png);
}

/**
 * Handles /api/v1/*; throws GatewayError for the server to answer. A database that cannot serve is
 * DATABASE_UNAVAILABLE (503, try again), not an internal error.
 */
export async function handleApi(deps: ApiDeps, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  try {
    await route(deps, req, res, path);
  } catch (error) {
    throw isDatabaseUnavailable(error) ? databaseUnavailable(error) : error;
  }
}

async function route(deps: ApiDeps, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  authorize(req, deps.config.controlToken);
  const parts = path.split('/').filter(Boolean).slice(2); // drop "api", "v1"
  const method = req.method ?? 'GET';
  const [collection, id, sub, action, ...rest] = parts;
  const allow = (allowed: string) => {
    if (!allowed.split(', ').includes(method)) {
      res.setHeader('Allow', allowed);
      throw new GatewayError('METHOD_NOT_ALLOWED', `use ${allowed} on this path`);
    }
  };
  if (collection === 'ports' && id === undefined) {
    allow('GET');
    const list = new URL(req.url ?? '/', 'http://x').searchParams.get('list');
    return sendJson(res, 200, await poolOp(deps, list === '1' || list === 'true'));
  }
  if (collection !== 'sessions' || rest.length > 0) throw new GatewayError('NOT_FOUND', 'no such API path');
  if (id === undefined) {
    allow('POST');
    return sendJson(res, 201, await createSessionOp(deps, await readJson(req, true)));
  }
  if (sub === undefined) {
    allow('GET, DELETE');
    if (method === 'GET') return sendJson(res, 200, await getSessionOp(deps, id));
    return sendJson(res, 200, await stopSessionOp(deps, id));
  }
  if (sub === 'consoles' && action === 'close') {
    allow('POST');
    return sendJson(res, 200, await closeConsolesOp(deps, id));
  }
  if (action !== undefined) throw new GatewayError('NOT_FOUND', 'no such API path');
  if (sub === 'screenshot') {
    allow('GET');
    return sendScreenshot(deps, req, res, id);
  }
  if (sub === 'target') {
    allow('PUT');
    return sendJson(res, 200, await commitTargetOp(deps, id, await readJson(req, true)));
  }
  if (sub === 'port') {
    allow('POST, DELETE');
    if (method === 'DELETE') return sendJson(res, 200, await releasePortOp(deps, id));
    const { lease, created } = await allocatePortOp(deps, id);
    return sendJson(res, created ? 201 : 200, lease);
  }
  if (sub === 'tickets') {
    allow('POST');
    return sendJson(res, 201, await mintTicketOp(deps, id, await readJson(req, false), deps.publicUrl(req)));
  }
  throw new GatewayError('NOT_FOUND', 'no such API path');
}
