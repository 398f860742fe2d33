import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startDemoVncServer, type DemoVncServer } from '../src/demo/demo-vnc.js';
import { probeSession } from '../src/fleet/probe.js';
import { parseCidrList } from '../src/console/target.js';

const allowed = parseCidrList('127.0.0.1/32');
const options = { allowed, socketDirs: [], readyPaths: ['vnc.html', 'vnc_lite.html', ''], attemptTimeoutMs: 500 };
// websockify forks a Python process per connection: on a loaded 2-core CI machine that alone can
// take longer than 0.5 s, so the tests that expect an answer from it allow more.
const websockifyOptions = { ...options, attemptTimeoutMs: 5_000 };
const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function listen(server: Server | HttpServer): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return (server.address() as AddressInfo).port;
}

async function demoVnc(): Promise<DemoVncServer> {
  const vnc = await startDemoVncServer();
  cleanups.push(() => vnc.close());
  return vnc;
}

/** A TCP server that accepts and then stays silent, counting its open connections. */
async function silentServer(): Promise<{ port: number; open: Set<Socket> }> {
  const open = new Set<Socket>();
  const server = createServer((socket) => {
    open.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => open.delete(socket));
  });
  const port = await listen(server);
  cleanups.push(() => open.forEach((s) => s.destroy()));
  return { port, open };
}

async function until(check: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Debian's websockify in front of `vncPort`; a random port, retried when it is taken. */
async function startWebsockify(webFiles: string[], vncPort: number): Promise<{ port: number; child: ChildProcess }> {
  const web = await mkdtemp(join(tmpdir(), 'cg-web-'));
  for (const file of webFiles) await writeFile(join(web, file), '<!doctype html><title>noVNC</title>');
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    const child = spawn('/usr/bin/websockify', ['--web', web, `127.0.0.1:${port}`, `127.0.0.1:${vncPort}`], { stdio: 'ignore' });
    const exited = new Promise<'exited'>((resolve) => child.once('exit', () => resolve('exited')));
    const listening = (async () => {
      for (let i = 0; i < 100; i++) {
        const up = await new Promise<boolean>((resolve) => {
          const s = connect(port, '127.0.0.1');
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        });
        if (up) return 'listening' as const;
        await new Promise((r) => setTimeout(r, 50));
      }
      return 'timeout' as const;
    })();
    const outcome = await Promise.race([exited, listening]);
    if (outcome === 'listening' && child.exitCode === null) {
      cleanups.push(() => {
        child.kill('SIGKILL');
        return exited;
      });
      return { port, child };
    }
    child.kill('SIGKILL');
  }
  throw new Error('websockify did not start');
}

describe('vnc probe', () => {
  it('is ready when the VNC server sends its RFB banner', async () => {
    const vnc = await demoVnc();
    const result = await probeSession({ host: '127.0.0.1', port: vnc.port, path: null }, 'vnc', options);
    expect(result).toMatchObject({ ok: true });
    expect(result.elapsedMs).toBeLessThan(500);
  });

  it('fails fast with "TCP connect refused" when nothing listens', async () => {
    const server = createServer();
    const port = await listen(server);
    await new Promise((resolve) => server.close(resolve));
    const result = await probeSession({ host: '127.0.0.1', port, path: null }, 'vnc', options);
    expect(result).toMatchObject({ ok: false, kind: 'tcp', reason: 'TCP connect refused' });
    expect(result.elapsedMs).toBeLessThan(250);
  });

  it('is not ready when the port is open but never speaks, and closes its socket', async () => {
    const silent = await silentServer();
    const result = await probeSession({ host: '127.0.0.1', port: silent.port, path: null }, 'vnc', options);
    expect(result).toMatchObject({ ok: false, kind: 'banner', reason: 'no RFB banner within 0.5 s' });
    await until(() => silent.open.size === 0);
  });

  it('is not ready when something other than VNC answers', async () => {
    const server = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    const port = await listen(server);
    const result = await probeSession({ host: '127.0.0.1', port, path: null }, 'vnc', options);
    expect(result).toMatchObject({ ok: false, kind: 'banner', reason: 'not an RFB banner: got "HTTP/1.1 400"' });
  });

  it('refuses a target outside TARGET_ALLOWED_CIDRS without dialling it', async () => {
    const silent = await silentServer();
    let dialled = false;
    const result = await probeSession({ host: 'localhost', port: silent.port, path: null }, 'vnc', {
      ...options,
      allowed: parseCidrList('10.0.0.0/8'),
      resolve: async () => ['127.0.0.1'],
    });
    dialled = silent.open.size > 0;
    expect(result).toMatchObject({ ok: false, kind: 'outside_cidrs', forbidden: true, reason: 'the VM address 127.0.0.1 is outside TARGET_ALLOWED_CIDRS' });
    expect(dialled).toBe(false);
  });

  it('stops at once when aborted', async () => {
    const silent = await silentServer();
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 50);
    const result = await probeSession({ host: '127.0.0.1', port: silent.port, path: null }, 'vnc', { ...options, attemptTimeoutMs: 10_000, signal: abort.signal });
    expect(result).toMatchObject({ ok: false, reason: 'probe aborted' });
    expect(result.elapsedMs).toBeLessThan(1_000);
    await until(() => silent.open.size === 0);
  });
});

describe('websockify probe (Debian websockify in front of a VNC server)', () => {
  it('is ready when the noVNC page is served and the WebSocket relays the RFB banner', async () => {
    const vnc = await demoVnc();
    const ws = await startWebsockify(['vnc.html'], vnc.port);
    const result = await probeSession({ host: '127.0.0.1', port: ws.port, path: '/websockify' }, 'websockify', websockifyOptions);
    expect(result, JSON.stringify(result)).toMatchObject({ ok: true });
  });

  it('reports the HTTP status when the web root lacks the noVNC pages', async () => {
    const vnc = await demoVnc();
    const ws = await startWebsockify([], vnc.port);
    const result = await probeSession({ host: '127.0.0.1', port: ws.port, path: null }, 'websockify', {
      ...websockifyOptions,
      readyPaths: ['vnc.html', 'vnc_lite.html'],
    });
    expect(result).toMatchObject({ ok: false, kind: 'http', reason: 'HTTP 404 on /vnc.html, HTTP 404 on /vnc_lite.html' });
  });

  it('is not ready when websockify answers but its VNC server is down', async () => {
    const server = createServer();
    const deadVncPort = await listen(server);
    await new Promise((resolve) => server.close(resolve));
    const ws = await startWebsockify(['vnc.html'], deadVncPort);
    const result = await probeSession({ host: '127.0.0.1', port: ws.port, path: null }, 'websockify', options);
    expect(result.ok).toBe(false);
    expect((result as { reason: string }).reason).toMatch(/^the WebSocket closed before the RFB banner|^no RFB banner over the WebSocket/);
  });

  it('reports a refused WebSocket handshake with its HTTP status', async () => {
    const server = createHttpServer((req, res) => {
      res.writeHead(req.url === '/vnc.html' ? 200 : 403).end();
    });
    const port = await listen(server);
    const result = await probeSession({ host: '127.0.0.1', port, path: '/websockify' }, 'websockify', options);
    expect(result).toMatchObject({ ok: false, kind: 'websocket', reason: 'WebSocket handshake refused (HTTP 403)' });
  });

  it('fails with "TCP connect refused" when websockify is not listening', async () => {
    const server = createServer();
    const port = await listen(server);
    await new Promise((resolve) => server.close(resolve));
    const result = await probeSession({ host: '127.0.0.1', port, path: null }, 'websockify', options);
    expect(result).toMatchObject({ ok: false, kind: 'tcp', reason: 'TCP connect refused' });
  });
});
