// A real TigerVNC Xvnc (Debian's tigervnc-standalone-server) on 127.0.0.1, with a small X client
// (test/fixtures/x-app.py) that turns a click and a key into a visible change, so browser tests
// can prove input reached the "VM".
//
// No port is probed and then handed out (a race): Xvnc gets a random display and RFB port and
// binds them itself; if either is taken it exits, and we try other numbers.
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import type { Readable } from 'node:stream';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const XVNC = process.env.XVNC_PATH ?? '/usr/bin/Xtigervnc';
export const VNCPASSWD = process.env.VNCPASSWD_PATH ?? '/usr/bin/tigervncpasswd';
const PYTHON = '/usr/bin/python3'; // Debian's, which has tkinter (python3-tk); not a pyenv shim
const X_APP = fileURLToPath(new URL('../fixtures/x-app.py', import.meta.url));
const ATTEMPTS = 8;
const START_TIMEOUT_MS = 20_000;

export interface XvncOptions {
  /** Offer VncAuth (security type 2) with this password instead of None (type 1). */
  password?: string;
  /** Screen size, `800x600` by default. */
  geometry?: string;
}

export interface Xvnc {
  /** The RFB (VNC) port on 127.0.0.1. */
  port: number;
  /** The X display number (DISPLAY=:N). */
  display: number;
  /** Kills the X client and Xvnc and waits until both exited. */
  close(): Promise<void>;
  /** SIGKILLs Xvnc (the VM dies) and waits until it exited. */
  crash(): Promise<void>;
}

/** Starts Xvnc and the test X client; resolves when RFB answers and the window is drawn. */
export async function startXvnc(options: XvncOptions = {}): Promise<Xvnc> {
  const dir = await mkdtemp(join(tmpdir(), 'cg-xvnc-'));
  try {
    const security = options.password === undefined ? ['-SecurityTypes', 'None'] : await vncAuth(dir, options.password);
    const failures: string[] = [];
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const display = randomInt(100, 899);
      // RFB ports 20000–29999: clear of the gateway's default pool (6100–6999), of 5900+N and of
      // Linux's ephemeral range (32768+), so outgoing connections never squat on them.
      const port = randomInt(20_000, 29_999);
      const started = await tryStart(display, port, security, options.geometry ?? '800x600');
      if (typeof started === 'string') {
        failures.push(`:${display} port ${port}: ${started}`);
        continue;
      }
      return {
        port,
        display,
        async crash() {
          const gone = exited(started.server);
          started.server.kill('SIGKILL');
          await gone;
        },
        async close() {
          await stopProcess(started.app);
          await stopProcess(started.server);
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    throw new Error(`Xvnc did not start in ${ATTEMPTS} attempts:\n${failures.join('\n')}`);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/** A VncAuth password file, obfuscated by TigerVNC's own vncpasswd (tigervnc-tools). */
async function vncAuth(dir: string, password: string): Promise<string[]> {
  const file = join(dir, 'passwd');
  const child = spawn(VNCPASSWD, ['-f'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
  child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
  child.stdin.end(`${password}\n`);
  const { code, error } = await exited(child);
  if (error !== undefined || code !== 0) {
    throw new Error(`${VNCPASSWD} -f failed (install tigervnc-tools): ${error?.message ?? Buffer.concat(err).toString().trim()}`);
  }
  await writeFile(file, Buffer.concat(out), { mode: 0o600 });
  return ['-SecurityTypes', 'VncAuth', '-PasswordFile', file];
}

/** One attempt: the started processes, or why it failed (then nothing is left running). */
async function tryStart(
  display: number,
  port: number,
  security: string[],
  geometry: string,
): Promise<{ server: ChildProcess; app: ChildProcess } | string> {
  const server = spawn(
    XVNC,
    [
      `:${display}`,
      '-rfbport', String(port),
      '-localhost', '-interface', '127.0.0.1',
      '-nolisten', 'tcp', // no X11 TCP port (6000+N) to clash on; clients use the unix socket
      ...security,
      // Behind the gateway every client has one address; a few failed auths must not lock all out.
      '-BlacklistThreshold', '10000',
      '-AlwaysShared',
      '-geometry', geometry,
      '-depth', '24',
      '-desktop', 'console-gateway-test',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const log = tail(server.stderr!);
  const ended = exited(server).then(({ code, signal, error }) => new Error(error?.message ?? `exited (${signal ?? code})`));
  // Our own Xvnc says it bound the port; only then can the banner not come from someone else's.
  const bound = new Promise<undefined>((resolve) => {
    const check = () => {
      if (!/Listening for VNC connections/.test(log())) return;
      server.stderr!.off('data', check);
      resolve(undefined);
    };
    server.stderr!.on('data', check);
  });
  const timeout = new Promise<Error>((resolve) =>
    setTimeout(resolve, START_TIMEOUT_MS, new Error('did not report listening in time')).unref(),
  );
  let banner = await Promise.race([bound, ended, timeout]);
  if (banner === undefined) {
    banner = await Promise.race([waitForBanner(port, /^RFB 003\.008\n/, START_TIMEOUT_MS), ended]);
  }
  if (banner instanceof Error) {
    await stopProcess(server);
    return `${banner.message}; Xvnc said: ${log().trim().split('\n').slice(-4).join(' | ')}`;
  }
  const app = await startApp(display);
  if (typeof app === 'string') {
    await stopProcess(server);
    throw new Error(app); // not a port clash: another display would not help
  }
  return { server, app };
}

/** Starts the X client on DISPLAY=:N and waits for its "ready" (window mapped and drawn). */
async function startApp(display: number): Promise<ChildProcess | string> {
  const app = spawn(PYTHON, [X_APP], {
    env: { ...process.env, DISPLAY: `:${display}` },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = tail(app.stderr!);
  const ready = new Promise<true>((resolve) => {
    let seen = '';
    app.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes('ready')) resolve(true);
    });
  });
  const outcome = await Promise.race([
    ready,
    exited(app).then(({ code, error }) => error?.message ?? `exited (${code})`),
    new Promise<string>((resolve) => setTimeout(resolve, START_TIMEOUT_MS, 'no "ready" within the timeout').unref()),
  ]);
  if (outcome === true) return app;
  await stopProcess(app);
  return `the test X client (${X_APP}, needs python3-tk) failed: ${outcome}; it said: ${log().trim()}`;
}

// Child-process helpers, shared with websockify.ts (kept here to stay within this file set).

/** A uniformly random integer in [min, max]. */
export function randomInt(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}

/** Resolves once the child has exited (or failed to spawn); never rejects. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode });
      return;
    }
    child.once('error', (error) => resolve({ code: null, signal: null, error }));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the child is gone. */
export async function stopProcess(child: ChildProcess, graceMs = 3_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const done = exited(child);
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await done;
  clearTimeout(timer);
}

/** Keeps the last `max` characters a stream printed (and drains it, so the child never blocks). */
export function tail(stream: Readable, max = 4_000): () => string {
  let text = '';
  stream.on('data', (chunk: Buffer) => {
    text = (text + chunk.toString()).slice(-max);
  });
  return () => text;
}

/**
 * Connects to 127.0.0.1:port until the first bytes match `banner`, retrying while the port is not
 * yet listening. Resolves with undefined on success, or an Error after `timeoutMs`.
 */
export async function waitForBanner(port: number, banner: RegExp, timeoutMs: number): Promise<Error | undefined> {
  const deadline = Date.now() + timeoutMs;
  let last = 'not listening';
  while (Date.now() < deadline) {
    const result = await readBanner(port, Math.min(2_000, deadline - Date.now()));
    if (typeof result !== 'string') {
      if (banner.test(result.toString('latin1'))) return undefined;
      last = `unexpected banner ${JSON.stringify(result.toString('latin1').slice(0, 40))}`;
    } else {
      last = result;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return new Error(`127.0.0.1:${port} did not answer with ${banner} within ${timeoutMs} ms (${last})`);
}

/** The first chunk the server at 127.0.0.1:port sends, or why there was none. */
export function readBanner(port: number, timeoutMs: number): Promise<Buffer | string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const finish = (result: Buffer | string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish('no banner in time'), Math.max(timeoutMs, 50));
    socket.once('data', (chunk: Buffer) => finish(chunk));
    socket.once('error', (error: NodeJS.ErrnoException) => finish(error.code ?? error.message));
    socket.once('close', () => finish('closed without a banner'));
  });
}
