// The console page as the build produces it: one hashed, minified script (page + noVNC) and one
// stylesheet, precompressed, immutable; the HTML uncached. Checked over HTTP and in Chromium.
import { request } from 'node:http';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chooseEncoding } from '../src/console/page-assets.js';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { launchBrowser } from './helpers/browser.js';
import { startTestGateway, type TestGateway } from './helpers/gateway.js';

let gateway: TestGateway;
let vnc: DemoVncServer;
let browser: Browser;
beforeAll(async () => {
  [gateway, vnc, browser] = await Promise.all([startTestGateway(), startDemoVncServer(), launchBrowser()]);
}, 90_000);
afterAll(async () => {
  await browser?.close();
  await gateway?.stop();
  await vnc?.close();
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** A GET with exactly the Accept-Encoding given (fetch would add and undo its own). */
function get(path: string, acceptEncoding?: string, method = 'GET'): Promise<Answer> {
  const { hostname, port } = new URL(gateway.url);
  const headers = acceptEncoding === undefined ? {} : { 'accept-encoding': acceptEncoding };
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function assetPaths(): Promise<{ script: string; style: string }> {
  const html = (await get('/console')).body.toString();
  const script = html.match(/<script type="module" src="\.\/(assets\/console-[A-Z0-9]{8}\.js)"><\/script>/)?.[1];
  const style = html.match(/<link rel="stylesheet" href="\.\/(assets\/console-[A-Z0-9]{8}\.css)">/)?.[1];
  expect(script, 'the page loads one hashed script').toBeDefined();
  expect(style, 'the page loads one hashed stylesheet').toBeDefined();
  return { script: `/${script}`, style: `/${style}` };
}

describe('the built console page', () => {
  it('loads one hashed script and stylesheet, with no inline script, and is never cached', async () => {
    const page = await get('/console?ticket=abc', 'identity');
    expect(page.status).toBe(200);
    expect(page.headers['cache-control']).toBe('no-store');
    expect(page.headers['content-security-policy']).toMatch(/script-src 'self'/);
    expect(page.headers.vary).toBe('Accept-Encoding');
    const html = page.body.toString();
    expect(html).toContain('<main id="screen"');
    const scripts = html.match(/<script\b[^>]*>/g) ?? [];
    expect(scripts).toHaveLength(1);
    expect(scripts[0]).toMatch(/ src="/);
    expect(html).not.toMatch(/novnc\/|static\/console\.js/);
    await assetPaths();
  });

  it('serves the script precompressed in the encoding asked for, byte-identical once decoded', async () => {
    const { script } = await assetPaths();
    const plain = await get(script, 'identity');
    expect(plain.status).toBe(200);
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(plain.body.includes('Raw channel missing property'), 'noVNC is inside the bundle').toBe(true);

    const br = await get(script, 'gzip, deflate, br');
    expect(br.headers['content-encoding']).toBe('br');
    expect(Number(br.headers['content-length'])).toBe(br.body.length);
    expect(br.body.length).toBeLessThan(plain.body.length / 3);
    expect(brotliDecompressSync(br.body).equals(plain.body)).toBe(true);

    const gz = await get(script, 'gzip, deflate');
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(gz.body).equals(plain.body)).toBe(true);

    expect((await get(script, 'br;q=0, gzip')).headers['content-encoding']).toBe('gzip');
    expect((await get(script)).headers['content-encoding']).toBeUndefined();
    for (const answer of [plain, br, gz]) expect(answer.headers.vary).toBe('Accept-Encoding');
  });

  it('marks hashed files immutable and answers unknown ones with 404', async () => {
    const { script, style } = await assetPaths();
    for (const path of [script, style]) {
      const res = await get(path, 'br');
      expect(res.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      expect(res.headers['x-content-type-options']).toBe('nosniff');
    }
    expect((await get(style, 'identity')).headers['content-type']).toBe('text/css; charset=utf-8');
    expect((await get('/assets/console-AAAAAAAA.js')).status).toBe(404);
    expect((await get('/assets/../package.json')).status).toBe(404);
    expect((await get(script, 'br', 'HEAD')).body.length).toBe(0);
    expect((await get(script, 'br', 'POST')).status).toBe(405);
  });

  it('prefers brotli, then gzip, and honours q=0', () => {
    const all = { identity: Buffer.alloc(1), br: Buffer.alloc(1), gzip: Buffer.alloc(1) };
    expect(chooseEncoding('gzip, br', all)).toBe('br');
    expect(chooseEncoding('gzip;q=0.5, br;q=0', all)).toBe('gzip');
    expect(chooseEncoding('*', all)).toBe('br');
    expect(chooseEncoding('*, br;q=0, gzip;q=0', all)).toBe('identity');
    expect(chooseEncoding('deflate', all)).toBe('identity');
    expect(chooseEncoding(undefined, all)).toBe('identity');
    expect(chooseEncoding('br', { identity: Buffer.alloc(1) })).toBe('identity');
  });

  it('connects in Chromium from the bundle alone, without loading noVNC modules', async () => {
    const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
    const ticket = await gateway.mint(id);
    const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
    const requested: string[] = [];
    const encodings: string[] = [];
    page.on('response', (res) => {
      requested.push(new URL(res.url()).pathname);
      if (res.url().endsWith('.js')) encodings.push(res.headers()['content-encoding'] ?? 'identity');
    });
    try {
      await page.goto(`${gateway.url}/console?ticket=${ticket}`);
      await expect.poll(() => page.locator('#status').getAttribute('data-state'), { timeout: 20_000 }).toBe('connected');
      await expect.poll(() => page.locator('#screen canvas').count(), { timeout: 5_000 }).toBe(1);
      expect(requested.filter((p) => p.endsWith('.js'))).toEqual([expect.stringMatching(/^\/assets\/console-[A-Z0-9]{8}\.js$/)]);
      expect(requested.some((p) => p.startsWith('/novnc/') || p.startsWith('/static/'))).toBe(false);
      expect(['br', 'gzip']).toContain(encodings[0]);
      expect(page.url()).not.toContain(ticket);
    } finally {
      await page.close();
    }
  });
});
