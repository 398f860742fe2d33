// Starts a real gateway on 127.0.0.1:0 against a real database (PostgreSQL when `databaseUrl` is
// given, otherwise the embedded one in a fresh directory), capturing its log lines as parsed JSON.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { WebSocket } from 'ws';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/ops/log.js';
import { startServe, type Running } from '../../src/app.js';
import { mintTicket } from '../../src/console/ticket.js';

export const SECRET = 'test-secret-that-is-at-least-32-bytes-long!';
export const CONTROL_TOKEN = 'control-token-for-tests-0123456789';

export interface TestGateway {
  running: Running;
  url: string;
  wsUrl: string;
  logs: Record<string, unknown>[];
  /** Every byte the gateway logged, to search for leaked secrets. */
  rawLogs(): string;
  mint(sessionId: string, ttlSeconds?: number): Promise<string>;
  api(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: any }>;
  stop(): Promise<void>;
}

/** The environment every test gateway starts from: loopback, ephemeral port, gating off. */
export const TEST_ENV: Readonly<Record<string, string>> = {
  PORT: '0',
  HOST: '127.0.0.1',
  TICKET_SECRET: SECRET,
  CONTROL_TOKEN,
  TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
  NOVNC_READY_GATING_ENABLED: 'false',
  DRAIN_TIMEOUT_SECONDS: '1',
};

export async function startTestGateway(env: Record<string, string> = {}, databaseUrl?: string): Promise<TestGateway> {
  const dataDir = databaseUrl === undefined ? await mkdtemp(join(tmpdir(), 'cg-embedded-')) : undefined;
  const config = loadConfig(
    {
      ...TEST_ENV,
      ...(databaseUrl !== undefined ? { DATABASE_URL: databaseUrl } : { DATA_DIR: dataDir! }),
      ...env,
    },
    { tickets: true },
  );
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  const running = await startServe(config, createLogger('debug', sink));
  const url = running.gateway.url;
  return {
    running,
    url,
    wsUrl: url.replace('http', 'ws') + '/websockify',
    get logs() {
      return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    },
    rawLogs: () => lines.join('\n'),
    mint: async (sessionId, ttlSeconds = 60) => (await mintTicket({ sessionId, key: SECRET, ttlSeconds })).ticket,
    async api(method, path, body, token = CONTROL_TOKEN) {
      const res = await fetch(url + path, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined };
    },
    async stop() {
      await running.stop();
      if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export interface Outcome {
  /** The subprotocol the gateway chose, when the handshake completed. */
  protocol?: string;
  code?: number;
  reason?: string;
  /** Binary messages received before the close. */
  messages: Buffer[];
  /** HTTP status when the handshake was refused with plain HTTP. */
  httpStatus?: number;
}

/**
 * Opens a console WebSocket and records what happens until `untilMessages` messages arrived (then
 * closes) or the server closed it.
 */
export function openConsole(
  url: string,
  options: { protocols?: string[]; headers?: Record<string, string>; untilMessages?: number; timeoutMs?: number; localAddress?: string } = {},
): Promise<Outcome> {
  return new Promise((resolve) => {
    const outcome: Outcome = { messages: [] };
    const ws = new WebSocket(url, options.protocols ?? ['binary'], {
      headers: options.headers ?? {},
      ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {}),
    });
    const timer = setTimeout(() => ws.terminate(), options.timeoutMs ?? 20_000);
    ws.on('open', () => (outcome.protocol = ws.protocol));
    ws.on('message', (data: Buffer) => {
      outcome.messages.push(data);
      if (options.untilMessages !== undefined && outcome.messages.length >= options.untilMessages) ws.close(1000);
    });
    ws.on('unexpected-response', (_req, res) => {
      outcome.httpStatus = res.statusCode;
      clearTimeout(timer);
      resolve(outcome);
    });
    ws.on('error', () => {});
    ws.on('close', (code, reason) => {
      clearTimeout(timer);
      outcome.code = code;
      outcome.reason = reason.toString();
      resolve(outcome);
    });
  });
}
