// First frame in Chromium: a fresh browser per run, page load → the first VNC pixels drawn on the
// page's canvas. An init script (run before any page script, and not subject to the page's CSP)
// wraps the 2D context's drawImage/putImageData and stamps performance.now() — whose origin is the
// navigation start — at the first draw onto a canvas that is in the document and has a size.
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

function stampFirstDraw() {
  const proto = CanvasRenderingContext2D.prototype;
  for (const name of ['drawImage', 'putImageData']) {
    const original = proto[name];
    proto[name] = function (...args) {
      const canvas = this.canvas;
      if (window.__firstFrameMs === undefined && canvas.isConnected && canvas.width > 0 && canvas.height > 0) {
        window.__firstFrameMs = performance.now();
      }
      return original.apply(this, args);
    };
  }
}

/**
 * Launches Chromium, opens `url`, waits for the first frame; returns { ms, launchMs, requests }.
 * `ms` is navigation start → first draw (the browser's own launch is not in it).
 */
export async function firstFrame(url, timeoutMs = 30_000) {
  const t0 = performance.now();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60_000 });
  const launchMs = performance.now() - t0;
  try {
    const context = await browser.newContext({ viewport: { width: 1024, height: 768 } });
    await context.addInitScript(stampFirstDraw);
    const page = await context.newPage();
    let requests = 0;
    page.on('request', () => requests++);
    await page.goto(url, { waitUntil: 'commit' });
    const handle = await page.waitForFunction(() => window.__firstFrameMs, undefined, { timeout: timeoutMs, polling: 20 });
    return { ms: await handle.jsonValue(), launchMs, requests };
  } finally {
    await browser.close();
  }
}
