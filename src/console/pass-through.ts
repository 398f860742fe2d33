// The byte pump for websockify pass-through: the target's WebSocket frames flow to the browser and
// the browser's to the target unchanged, zero-copy, with backpressure both ways.
import type { Socket } from 'node:net';
import type { Traffic } from '../ops/metrics.js';
import type { OnStop, Pump, PumpStats } from './pump.js';

export interface PassThroughOptions {
  traffic: Traffic;
  onStop: OnStop;
}

/** Pipes `browser` ⇄ `target` (both already switched to WebSocket) until either ends. */
export function passThrough(browser: Socket, target: Socket, options: PassThroughOptions): Pump {
  const { traffic, onStop } = options;
  const stats: PumpStats = { down: 0, up: 0, lastActivity: Date.now() };
  let lost: string | undefined;

  target.on('data', function targetOnData(chunk: Buffer) {
    stats.lastActivity = Date.now();
    stats.down += chunk.length;
    traffic.down += chunk.length;
    if (!browser.write(chunk)) target.pause();
  });
  browser.on('drain', () => target.resume());
  browser.on('data', function browserOnData(chunk: Buffer) {
    stats.lastActivity = Date.now();
    stats.up += chunk.length;
    traffic.up += chunk.length;
    if (!target.write(chunk)) browser.pause();
  });
  target.on('drain', () => browser.resume());

  target.on('error', (error: NodeJS.ErrnoException) => (lost ??= error.code ?? 'error'));
  browser.on('error', () => browser.destroy());
  // The HTTP server's sockets allow half-open connections: a browser that sent FIN is gone.
  browser.on('end', () => browser.destroy());
  const done = new Promise<void>((resolve) => {
    let open = 2;
    const closed = () => --open === 0 && resolve();
    target.once('close', () => {
      if (lost === undefined) onStop({ code: 'VM_CLOSED', message: 'the VM closed the console connection' });
      else onStop({ code: 'VM_CONNECTION_LOST', message: `lost the connection to the VM console (${lost})` });
      browser.end();
      closed();
    });
    browser.once('close', () => {
      onStop({ code: 'BROWSER_CLOSED', message: 'the browser closed the console' });
      target.destroy();
      closed();
    });
  });
  target.resume();
  browser.resume();
  return {
    stats,
    done,
    close() {
      browser.destroy();
      target.destroy();
    },
    heartbeat: () => true,
  };
}
