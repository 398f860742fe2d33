// A real QEMU VM (Debian's qemu-system-x86, TCG, no disk) for console tests: the SeaBIOS screen
// ("No bootable device.") is the VM's console. QEMU serves it through its own VNC server, on TCP or
// a unix socket, optionally with a password and its native WebSocket listener beside it; QMP
// (`screendump`, `query-vnc`) is how tests see what the VM really shows.
//
// No port is probed and then handed out (a race): QEMU binds random ports itself and exits when one
// is taken, and we try others. QMP on a private unix socket answers only once the VNC listeners
// are bound, so a QMP answer means the ports belong to this QEMU.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exited, randomInt, stopProcess, tail } from './xvnc.js';

export const QEMU = process.env.QEMU_PATH ?? '/usr/bin/qemu-system-x86_64';
const ATTEMPTS = 8;
const START_TIMEOUT_MS = 20_000;

export interface QemuOptions {
  /** QEMU's native WebSocket listener (RFB over WebSocket, no web root) on a port of its own. */
  websocket?: boolean;
  /** VncAuth with this password (VNC passwords are at most 8 characters), given as a secret object. */
  password?: string;
  /** Serve VNC on this unix socket path instead of TCP. */
  socket?: string;
}

export interface Screen {
  width: number;
  height: number;
  /** Packed RGB, 3 bytes a pixel, row by row. */
  rgb: Buffer;
}

export interface Qemu {
  /** The VNC port on 127.0.0.1 (undefined with `socket`). */
  port: number | undefined;
  /** The WebSocket port on 127.0.0.1, with `websocket`. */
  websocketPort: number | undefined;
  /** The VNC unix socket, with `socket`. */
  socket: string | undefined;
  /** Runs a QMP command; rejects with QEMU's error description. */
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** Names of the QMP events seen so far (RESET when the guest reboots, …). */
  events(): string[];
  /** What the VM's display shows now, from QEMU itself (QMP screendump). */
  screendump(): Promise<Screen>;
  /** SIGKILL: the VM dies the way a crashed VM does, leaving its sockets unanswered. */
  kill(): Promise<void>;
  /** Stops QEMU (if still running) and removes its files. */
  close(): Promise<void>;
}

/** Starts QEMU; resolves when QMP answers (so its VNC listeners are bound). */
export async function startQemu(options: QemuOptions = {}): Promise<Qemu> {
  const dir = await mkdtemp(join(tmpdir(), 'cg-qemu-'));
  try {
    const secret: string[] = [];
    if (options.password !== undefined) {
      await writeFile(join(dir, 'vnc-password'), options.password, { mode: 0o600 });
      secret.push('-object', `secret,id=vncpw,file=${join(dir, 'vnc-password')}`);
    }
    const failures: string[] = [];
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      // 32001–32767: clear of websockify's 10000–19999, Xvnc's 20000–29999, HAProxy's 30000–32000
      // (the other helpers), the gateway's default pool (6100–6999) and Linux's ephemeral range.
      const port = options.socket === undefined ? randomInt(32_001, 32_383) : undefined;
      const websocketPort = options.websocket ? randomInt(32_384, 32_767) : undefined;
      const vnc = [
        options.socket !== undefined ? `unix:${options.socket}` : `127.0.0.1:${port! - 5900}`,
        ...(websocketPort !== undefined ? [`websocket=127.0.0.1:${websocketPort}`] : []),
        ...(options.password !== undefined ? ['password-secret=vncpw'] : []),
      ].join(',');
      const started = await tryStart(dir, [...secret, '-vnc', vnc]);
      if (typeof started === 'string') {
        failures.push(`${vnc}: ${started}`);
        continue;
      }
      return handle(dir, started, { port, websocketPort, socket: options.socket });
    }
    throw new Error(`QEMU did not start in ${ATTEMPTS} attempts:\n${failures.join('\n')}`);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

interface Started {
  child: ChildProcess;
  qmp: Qmp;
}

async function tryStart(dir: string, extra: string[]): Promise<Started | string> {
  const qmpPath = join(dir, 'qmp.sock');
  await rm(qmpPath, { force: true });
  const child = spawn(
    QEMU,
    [
      '-nodefaults', '-no-user-config',
      '-machine', 'pc,accel=tcg',
      '-m', '64',
      '-vga', 'std',
      '-display', 'none',
      '-name', 'console-gateway-test',
      '-qmp', `unix:${qmpPath},server=on,wait=off`,
      ...extra,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const log = tail(child.stderr!);
  let gone: string | undefined;
  void exited(child).then(({ code, signal, error }) => (gone = error?.message ?? `exited (${signal ?? code})`));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline && gone === undefined) {
    const qmp = await openQmp(qmpPath).catch(() => undefined);
    if (qmp !== undefined) return { child, qmp };
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await stopProcess(child);
  return `${gone ?? 'QMP did not answer in time'}; QEMU said: ${log().trim().split('\n').slice(-3).join(' | ')}`;
}

function handle(dir: string, { child, qmp }: Started, where: Pick<Qemu, 'port' | 'websocketPort' | 'socket'>): Qemu {
  let dumps = 0;
  return {
    ...where,
    qmp: (command, args) => qmp.execute(command, args),
    events: () => [...qmp.events],
    async screendump() {
      const file = join(dir, `screen-${dumps++}.ppm`);
      await qmp.execute('screendump', { filename: file });
      const screen = parsePpm(await readFile(file));
      await rm(file, { force: true });
      return screen;
    },
    async kill() {
      qmp.close();
      const done = exited(child);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await done;
    },
    async close() {
      qmp.close();
      await stopProcess(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

interface Qmp {
  readonly events: string[];
  execute(command: string, args?: Record<string, unknown>): Promise<unknown>;
  close(): void;
}

/** Connects to QMP, reads the greeting and leaves capabilities negotiation mode. */
function openQmp(path: string): Promise<Qmp> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(path);
    const waiting: { resolve(value: unknown): void; reject(error: Error): void }[] = [];
    let buffered = '';
    let greeted = false;
    const qmp: Qmp = {
      events: [],
      execute(command, args) {
        return new Promise((resolve, reject) => {
          if (socket.destroyed) return reject(new Error('QMP connection closed'));
          waiting.push({ resolve, reject });
          socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
        });
      },
      close: () => socket.destroy(),
    };
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const message = JSON.parse(buffered.slice(0, newline)) as { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
        buffered = buffered.slice(newline + 1);
        if (message.QMP !== undefined && !greeted) {
          greeted = true;
          qmp.execute('qmp_capabilities').then(() => resolve(qmp), reject);
        } else if (message.error !== undefined) {
          waiting.shift()?.reject(new Error(`QMP: ${message.error.desc}`));
        } else if ('return' in message) {
          waiting.shift()?.resolve(message.return);
        } else if (message.event !== undefined) {
          qmp.events.push(message.event);
        }
      }
    });
    socket.on('error', (error) => {
      reject(error);
      for (const w of waiting.splice(0)) w.reject(error);
    });
    socket.on('close', () => {
      for (const w of waiting.splice(0)) w.reject(new Error('QMP connection closed'));
    });
  });
}

/** Binary PPM (P6, maxval 255), which is what `screendump` writes by default. */
export function parsePpm(data: Buffer): Screen {
  // Header: magic, width, height, maxval, separated by whitespace, then one whitespace byte.
  const fields: string[] = [];
  let at = 0;
  while (fields.length < 4) {
    while (/\s/.test(String.fromCharCode(data[at]!))) at++;
    const start = at;
    while (!/\s/.test(String.fromCharCode(data[at]!))) at++;
    fields.push(data.subarray(start, at).toString('latin1'));
  }
  const [magic, width, height, maxval] = fields;
  if (magic !== 'P6' || maxval !== '255') throw new Error(`not an 8-bit P6 PPM (${magic}, maxval ${maxval})`);
  const w = Number(width);
  const h = Number(height);
  return { width: w, height: h, rgb: data.subarray(at + 1, at + 1 + w * h * 3) };
}
