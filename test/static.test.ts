import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safeJoin } from '../src/console/static.js';
import { openConsole, startTestGateway, type TestGateway } from './helpers/gateway.js';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';

let gateway: TestGateway;
let vnc: DemoVncServer;
beforeAll(async () => {
  [gateway, vnc] = await Promise.all([startTestGateway(), startDemoVncServer()]);
});
afterAll(async () => {
  await gateway?.stop();
  await vnc?.close();
});

/** A raw GET that keeps the path exactly as written (fetch would normalise dot segments). */
function rawGet(path: string, method = 'GET'): Promise<{ status: number; type?: string; body: string }> {
  const { hostname, port } = new URL(gateway.url);
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port, path, method }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, type: res.headers['content-type'], body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('static files', () => {
  it('serves the console page with a strict policy and no caching', async () => {
    const res = await fetch(`${gateway.url}/console?ticket=abc`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    expect(res.headers.get('content-security-policy')).toMatch(/script-src 'self'/);
    expect(await res.text()).toContain('<main id="screen"');
  });

  it('serves noVNC as ES modules with the JavaScript type, from this server', async () => {
    const rfb = await rawGet('/novnc/core/rfb.js');
    expect(rfb.status).toBe(200);
    expect(rfb.type).toBe('text/javascript; charset=utf-8');
    expect(rfb.body).toMatch(/export default class RFB/);
    const page = await rawGet('/static/console.js');
    expect(page.type).toBe('text/javascript; charset=utf-8');
    expect(page.body).toContain("from '../novnc/core/rfb.js'");
  });

  it.each([
    '/novnc/../package.json',
    '/novnc/core/../../package.json',
    '/novnc/core/%2e%2e/%2e%2e/package.json',
    '/novnc/core%2f..%2f..%2fpackage.json',
    '/novnc/core/..%5c..%5cpackage.json',
    '/static/..%2f..%2fpackage.json',
    '/static/%00console.js',
    '/static/.hidden',
    '/novnc/package.json',
    '/novnc/docs/API.md',
  ])('refuses %s', async (path) => {
    expect((await rawGet(path)).status).toBe(404);
  });

  it('lists no directories', async () => {
    for (const path of ['/novnc/core/', '/novnc/core', '/static/', '/novnc/vendor/']) expect((await rawGet(path)).status).toBe(404);
  });

  it('answers HEAD without a body and refuses other methods', async () => {
    const head = await rawGet('/novnc/core/rfb.js', 'HEAD');
    expect(head).toMatchObject({ status: 200, body: '' });
    expect((await rawGet('/console', 'POST')).status).toBe(405);
  });

  it('does not consume the ticket when the page is loaded', async () => {
    const id = (await gateway.api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vnc.port } })).body.id;
    const ticket = await gateway.mint(id);
    expect((await fetch(`${gateway.url}/console?ticket=${ticket}`)).status).toBe(200);
    const outcome = await openConsole(`${gateway.wsUrl}?ticket=${ticket}`, { untilMessages: 1 });
    expect(outcome.messages[0]?.toString()).toBe('RFB 003.008\n');
  });

  it('maps only plain relative paths inside the root', () => {
    expect(safeJoin('/srv/root', 'a/b.js')).toBe('/srv/root/a/b.js');
    expect(safeJoin('/srv/root', '../x')).toBeUndefined();
    expect(safeJoin('/srv/root', '%E0%A4%A')).toBeUndefined();
    expect(safeJoin('/srv/root', '')).toBeUndefined();
  });
});
