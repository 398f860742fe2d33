// What a test checks about how a console ended: the close the browser got, the change in
// console_gateway_closes_total by code, and the gateway's one log line about it.
import { expect, vi } from 'vitest';
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
