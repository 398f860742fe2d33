// What a test checks about how a console ended: the close the browser got, the change in
// console_gateway_closes_total by code, and the gateway's one log line about it.
import type { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { expect, vi } from 'vitest';
import type { WebSocket } from 'ws';
import type { TestGateway } from './gateway.js';

export type Closes = Record<string, number>;

/** console_gateway_closes_total now, by code. */
export async function closesNow(gateway: TestGateway): Promise<Closes> {
  const values = (await gateway.running.metrics.closes.get()).values;
  return Object.fromEntries(values.map((v) => [String(v.labels.code), v.value]));
}

/** The codes whose count changed since `before`, with the change. */
export async function closesSince(gateway: TestGateway, before: Closes): Promise<Closes> {
  const now = await closesNow(gateway);
  return Object.fromEntries(Object.entries(now).flatMap(([code, n]) => (n !== (before[code] ?? 0) ? [[code, n - (before[code] ?? 0)]] : [])));
}

/** The gateway's log lines about `sessionId`'s console ending (or, with `refused`, being refused). */
export function endLines(gateway: TestGateway, sessionId: string, what = 'console ended'): Record<string, unknown>[] {
  return gateway.logs.filter((l) => l.sessionId === sessionId && String(l.msg).startsWith(`${what}: `));
}

/**
 * Waits for the one log line about how `sessionId`'s console ended and checks it agrees with the
 * close the browser got (`reason` is left out where the browser chose its own, e.g. it closed).
 * Returns the line.
 */
export async function expectEnding(
  gateway: TestGateway,
  sessionId: string,
  close: { code: number; reason?: string },
  endCode: string,
  what = 'console ended',
): Promise<Record<string, unknown>> {
  expect(close.code).not.toBe(1006);
  await vi.waitFor(() => expect(endLines(gateway, sessionId, what)).toHaveLength(1), { timeout: 10_000 });
  const line = endLines(gateway, sessionId, what)[0]!;
  expect(line).toMatchObject({ code: endCode, closeCode: close.code });
  if (close.reason !== undefined) expect(line.msg).toBe(`${what}: ${close.reason}`);
  if (what === 'console ended') {
    expect(line).toMatchObject({ seconds: expect.any(Number), bytesDown: expect.any(Number), bytesUp: expect.any(Number) });
  }
  return line;
}

/**
 * Stops the session of a console whose browser reads nothing (so never answers the close frame)
 * and checks the gateway lets the console go within seconds, not ws's 30: the VM side closes and
 * the console leaves the live set.
 */
export async function expectSilentBrowserDropped(
  gateway: TestGateway,
  c: { id: string; ws: WebSocket; vm: EventEmitter },
): Promise<void> {
  (c.ws as unknown as { _socket: Socket })._socket.pause();
  const vmClosed = new Promise((resolve) => c.vm.on('close', resolve));
  const started = Date.now();
  await gateway.api('DELETE', `/api/v1/sessions/${c.id}`);
  await vmClosed;
  await vi.waitFor(() => expect(gateway.running.gateway.consoles.live.size).toBe(0), { timeout: 10_000 });
  expect(Date.now() - started).toBeLessThan(10_000);
  c.ws.terminate();
}
