// Debian's HAProxy on 127.0.0.1 in front of gateway replicas, health-checking GET /readyz, for
// tests where a browser must reach "whichever replica is up" (drain and reconnect). Its backends
// are set through the admin socket after it started, so its own port can be known first (page
// origins depend on it) without probing a port and handing it out.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exited, randomInt, stopProcess, tail } from './xvnc.js';

export const HAPROXY = process.env.HAPROXY_PATH ?? '/usr/sbin/haproxy';
const ATTEMPTS = 8;
const START_TIMEOUT_MS = 10_000;

export interface Haproxy {
  port: number;
  /** Points server `name` (from `servers`) at 127.0.0.1:port and lets health checks bring it up. */
  setServer(name: string, port: number): Promise<void>;
  /** Resolves once the health checks have brought server `name` up (its operational state running). */
  waitUp(name: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts HAProxy with one backend of `servers` (the first is primary, the rest backups used only
 * while it is down), checked every 200 ms (down after two failures); all start in maintenance until setServer.
 */
export async function startHaproxy(servers: string[]): Promise<Haproxy> {
  const dir = await mkdtemp(join(tmpdir(), 'cg-haproxy-'));
  const socket = join(dir, 'admin.sock');
  const failures: string[] = [];
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    // 30000–32000: clear of websockify (10000–19999), Xvnc (20000–29999) and the ephemeral range.
    const port = randomInt(30_000, 32_000);
    const config = join(dir, 'haproxy.cfg');
    await writeFile(config, configText(port, socket, servers));
    const child = spawn(HAPROXY, ['-db', '-f', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = tail(child.stderr!);
    tail(child.stdout!);
    const problem = await started(child, socket);
    if (problem === undefined) {
      return {
        port,
        async setServer(name, serverPort) {
          await command(socket, `set server gateways/${name} addr 127.0.0.1 port ${serverPort}`);
          await command(socket, `set server gateways/${name} state ready`);
        },
        async waitUp(name) {
          const deadline = Date.now() + START_TIMEOUT_MS;
          while (Date.now() < deadline) {
            if (operationalState(await command(socket, 'show servers state gateways'), name) === RUNNING) return;
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          throw new Error(`HAProxy's checks did not bring server ${name} up within ${START_TIMEOUT_MS} ms`);
        },
        async close() {
          await stopProcess(child);
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    await stopProcess(child);
    failures.push(`port ${port}: ${problem}; haproxy said: ${log().trim().split('\n').slice(-3).join(' | ')}`);
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error(`haproxy did not start in ${ATTEMPTS} attempts:\n${failures.join('\n')}`);
}

function configText(port: number, socket: string, servers: string[]): string {
  return [
    'global',
    `  stats socket ${socket} mode 600 level admin`,
    'defaults',
    '  mode http',
    '  timeout connect 2s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  timeout tunnel 10m',
    '  timeout check 2s',
    'frontend fe',
    `  bind 127.0.0.1:${port}`,
    '  default_backend gateways',
    'backend gateways',
    '  option httpchk GET /readyz',
    '  default-server inter 200ms fall 2 rise 1',
    ...servers.map((name, i) => `  server ${name} 127.0.0.1:9 check disabled${i > 0 ? ' backup' : ''}`),
    '',
  ].join('\n');
}

/** Undefined once the admin socket answers; otherwise why HAProxy is not running. */
async function started(child: ChildProcess, socket: string): Promise<string | undefined> {
  let gone: string | undefined;
  void exited(child).then(({ code, signal, error }) => (gone = error?.message ?? `exited (${signal ?? code})`));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline && gone === undefined) {
    if ((await command(socket, 'show info').catch(() => '')).includes('Name: HAProxy')) return undefined;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return gone ?? 'the admin socket did not answer in time';
}

/** `srv_op_state` of a running server in `show servers state` (0 stopped, 1 starting, 3 stopping). */
const RUNNING = '2';

/** Server `name`'s srv_op_state in an answer to `show servers state`, read by the header's column names. */
function operationalState(answer: string, name: string): string | undefined {
  const lines = answer.split('\n');
  const columns = lines.find((l) => l.startsWith('# '))?.slice(2).split(' ') ?? [];
  const row = lines.map((l) => l.split(' ')).find((fields) => fields[columns.indexOf('srv_name')] === name);
  return row?.[columns.indexOf('srv_op_state')];
}

/** One command on the admin socket; resolves with its answer. */
function command(socket: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const client = connect(socket);
    let answer = '';
    client.on('data', (chunk) => (answer += chunk));
    client.on('error', reject);
    client.on('close', () => resolve(answer));
    client.write(`${text}\n`);
  });
}
