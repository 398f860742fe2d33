// Debian's websockify (/usr/bin/websockify, python3-websockify 0.10) on 127.0.0.1 in front of a
// VNC port, for the gateway's websockify pass-through and its readiness probes.
//
// No port is probed and then handed out (a race): websockify binds a random port itself and exits
// when it is taken, and we try another. To know the process answering is ours and not another
// test's websockify on the same port, we send a request with a unique path and wait for our own
// process to log it (-v logs every request line).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { request } from 'node:http';
import { exited, randomInt, stopProcess, tail } from './xvnc.js';

export const WEBSOCKIFY = process.env.WEBSOCKIFY_PATH ?? '/usr/bin/websockify';
const ATTEMPTS = 8;
const START_TIMEOUT_MS = 15_000;

export interface Websockify {
  /** The WebSocket (and, with `web`, HTTP) port on 127.0.0.1. */
  port: number;
  /** Stops websockify and waits until it exited. */
  close(): Promise<void>;
  /** SIGKILLs websockify and the processes it forked for its connections. */
  crash(): Promise<void>;
}

/** Starts websockify on 127.0.0.1:<random> relaying to 127.0.0.1:targetPort; `web` serves a directory too. */
export async function startWebsockify(targetPort: number, options: { web?: string } = {}): Promise<Websockify> {
  const failures: string[] = [];
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    // 10000–19999: clear of the gateway's default pool (6100–6999), Xvnc's 20000–29999 in xvnc.ts
    // and Linux's ephemeral range (32768+).
    const port = randomInt(10_000, 19_999);
    const child = spawn(
      WEBSOCKIFY,
      ['-v', ...(options.web !== undefined ? ['--web', options.web] : []), `127.0.0.1:${port}`, `127.0.0.1:${targetPort}`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const out = tail(child.stdout!, 20_000);
    const err = tail(child.stderr!, 20_000);
    const log = () => out() + err();
    const outcome = await ownPort(child, port, log);
    if (outcome === undefined) {
      return { port, close: () => stopProcess(child), crash: () => crash(child) };
    }
    await stopProcess(child);
    failures.push(`port ${port}: ${outcome}; websockify said: ${log().trim().split('\n').slice(-3).join(' | ')}`);
  }
  throw new Error(`websockify did not start in ${ATTEMPTS} attempts:\n${failures.join('\n')}`);
}

/** websockify forks a process per connection: kill those (by parent pid), then websockify. */
async function crash(child: ChildProcess): Promise<void> {
  const pid = child.pid!;
  const forks = (await readdir('/proc')).filter((d) => /^\d+$/.test(d)).filter((d) => parentOf(d) === pid);
  for (const fork of forks) process.kill(Number(fork), 'SIGKILL');
  const gone = exited(child);
  child.kill('SIGKILL');
  await gone;
}

function parentOf(pid: string): number | undefined {
  try {
    // Fields after the parenthesised command name: state, ppid, …
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

/** Undefined once `child` itself answered HTTP on `port`; otherwise why not. */
async function ownPort(child: ChildProcess, port: number, log: () => string): Promise<string | undefined> {
  let gone: string | undefined;
  void exited(child).then(({ code, signal, error }) => (gone = error?.message ?? `exited (${signal ?? code})`));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (gone !== undefined) return gone;
    const marker = `/cg-probe-${randomBytes(6).toString('hex')}`;
    if (await answers(port, marker)) {
      // The request line is logged just after the response is sent; give it a moment.
      for (let i = 0; i < 20 && gone === undefined; i++) {
        if (log().includes(marker)) return undefined;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return gone ?? `no answer within ${START_TIMEOUT_MS} ms`;
}

/** Whether an HTTP GET of `path` on 127.0.0.1:port got any response. */
function answers(port: number, path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, timeout: 2_000, agent: false }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}
