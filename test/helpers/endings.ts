// What a test checks about how a console ended: the close the browser got, the
// console_gateway_closes_total delta for its code and the gateway's one log line about it.
import { expect, vi } from 'vitest';
import type { TestGateway } from './gateway.js';

export async function closesCount(gateway: TestGateway, code: number): Promise<number> {
  const values = (await gateway.running.metrics.closes.get()).values;
  return values.find((v) => v.labels.code === String(code))?.value ?? 0;
}

/** The gateway's log lines about ended consoles (`console ended: …`) of one session. */
export function endLines(gateway: TestGateway, sessionId: string): Record<string, unknown>[] {
  return gateway.logs.filter((l) => l.sessionId === sessionId && String(l.msg).startsWith('console ended: '));
}

/**
 * Waits for the one log line about `sessionId`'s ended console and checks that it, the metric delta
 * (against `before`, the count for `close.code` taken before the console ended) and the close the
 * browser got agree. Returns the log line.
 */
export async function expectEnding(
  gateway: TestGateway,
  sessionId: string,
  close: { code: number; reason: string },
  before: number,
  endCode: string,
): Promise<Record<string, unknown>> {
  expect(close.code).not.toBe(1006);
  await vi.waitFor(() => expect(endLines(gateway, sessionId)).toHaveLength(1), { timeout: 10_000 });
  const line = endLines(gateway, sessionId)[0]!;
  expect(line).toMatchObject({ code: endCode, closeCode: close.code, msg: `console ended: ${close.reason}` });
  expect(line.seconds).toEqual(expect.any(Number));
  expect(line.bytesDown).toEqual(expect.any(Number));
  expect(line.bytesUp).toEqual(expect.any(Number));
  expect((await closesCount(gateway, close.code)) - before).toBe(1);
  return line;
}
