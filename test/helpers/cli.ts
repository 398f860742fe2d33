// Runs the built executable (dist/cli.js; `npm test` compiles first) as a child process.
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

export const CLI = resolve(import.meta.dirname, '../../dist/cli.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], env: Record<string, string>, timeoutMs = 30_000): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/**
 * Starts `serve` and resolves with its URL once it logs "gateway listening"; `openFiles` starts it
 * under that open-file limit (soft and hard, so Node cannot raise it).
 */
export function startServeProcess(
  env: Record<string, string>,
  timeoutMs = 30_000,
  openFiles?: number,
): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  return new Promise((resolvePromise, reject) => {
    const [command, args] =
      openFiles === undefined
        ? [process.execPath, [CLI, 'serve']]
        : ['bash', ['-c', `ulimit -n ${openFiles} && exec "$0" "$@"`, process.execPath, CLI, 'serve']];
    const child = spawn(command, args, { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`serve did not start: ${output}`));
    }, timeoutMs);
    const onData = (d: Buffer) => {
      output += d;
      const line = output.split('\n').find((l) => l.includes('"gateway listening"'));
      if (line) {
        clearTimeout(timer);
        resolvePromise({ child, url: (JSON.parse(line) as { url: string }).url, output: () => output });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code}: ${output}`));
    });
  });
}

/** Starts `gate` (the sidecar) and resolves with its OPS_PORT URL once it is listening. */
export function startGateProcess(env: Record<string, string>): Promise<{ child: ChildProcess; url: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, 'gate'], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`gate did not start: ${output}`));
    }, 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk;
      const line = output.split('\n').find((l) => l.includes('ops endpoints listening'));
      if (line === undefined) return;
      clearTimeout(timer);
      resolvePromise({ child, url: (JSON.parse(line) as { url: string }).url });
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`gate exited with ${code}: ${output}`));
    });
  });
}
