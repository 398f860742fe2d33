// The runtime hook: how the gateway asks the platform that runs the VMs for diagnostics, a teardown
// or the list of live resources, without knowing whether that is docker compose, kubectl or
// something else. A configured program (RUNTIME_HOOK_COMMAND, an argument list, never a shell) gets
// the action as its last argument and `{"action", "session"}` as JSON on stdin, and answers
// `{"ok", "output"?, "resources"?}` as JSON on stdout. See examples/hooks/README.md.
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { SessionRow } from '../db/schema.js';
import { targetOf, type Target } from '../db/sessions.js';
import { redactOwnerIn, redactText, redactValue, truncate } from '../ops/redact.js';

export type HookAction = 'diagnostics' | 'teardown' | 'list';

export interface HookSession {
  sessionId?: string;
  ownerId?: string | null;
  protocol?: string;
  target?: Target | null;
  port?: number | null;
}

export interface HookResult {
  ok: boolean;
  /** What the hook printed for people (ps, last log lines), truncated and redacted. */
  output: string;
  /** Live resources (`list`), each redacted. */
  resources: unknown[];
  /** Set when the hook failed: timeout, exit status, unparsable answer. One line. */
  error?: string;
  /** The hook's stderr tail, truncated and redacted. */
  stderr?: string;
  elapsedMs: number;
}

export interface RuntimeHook {
  /** Never rejects: a spawn error, a timeout or an unreadable answer is a result with ok: false. */
  /** `context` is merged into the request: `list` gets `namespaces` (RECONCILIATION_NAMESPACES). */
  run(action: HookAction, session: HookSession, context?: { namespaces?: readonly string[] }): Promise<HookResult>;
}

/** What a hook is told about a session; `port` is its pool port, if it holds (or held) one. */
export function hookSessionOf(row: SessionRow, port: number | undefined): HookSession {
  return { sessionId: row.id, ownerId: row.owner_id, protocol: row.protocol, target: targetOf(row), port: port ?? null };
}

export interface HookOptions {
  /** Values that must never appear in the output (TICKET_SECRET, CONTROL_TOKEN, …). */
  secrets?: readonly (string | undefined)[];
  /** Time between SIGTERM and SIGKILL once the timeout has passed. */
  killGraceMs?: number;
  /** The hook's whole environment (Config.runtimeHookEnv); none of the gateway's own. */
  env?: Readonly<Record<string, string>>;
}

/** The configured values no hook output, diagnostic or report may show. */
export function secretsOf(config: Pick<Config, 'ticketSecret' | 'controlToken' | 'databaseUrl'> & { credentialsKey?: Uint8Array | undefined }): string[] {
  const secrets = [config.controlToken, config.databaseUrl];
  if (config.ticketSecret !== undefined) secrets.push(new TextDecoder().decode(config.ticketSecret));
  if (config.credentialsKey !== undefined) secrets.push(Buffer.from(config.credentialsKey).toString('base64'));
  return secrets.filter((s): s is string => s !== undefined);
}

/** The hook of RUNTIME_HOOK_COMMAND, redacting the configured secrets; undefined when unset. */
export function runtimeHookFromConfig(config: Config, log: Logger): RuntimeHook | undefined {
  return createRuntimeHook(config.runtimeHookCommand, config.runtimeHookTimeoutSeconds * 1000, log, {
    secrets: secretsOf(config),
    env: config.runtimeHookEnv,
  });
}

/** Bytes read from each of stdout and stderr; anything beyond is discarded, not buffered. */
const COLLECT_BYTES = 64 * 1024;
/** Characters kept per field of the result. */
const KEEP_CHARS = 4 * 1024;

/** Returns the hook for `argv`, or undefined when no hook is configured. */
export function createRuntimeHook(argv: readonly string[], timeoutMs: number, log: Logger, options: HookOptions = {}): RuntimeHook | undefined {
  if (argv.length === 0) return undefined;
  const [program, ...args] = argv as [string, ...string[]];
  const killGraceMs = options.killGraceMs ?? 2_000;
  const secrets = options.secrets ?? [];
  const env = { ...options.env };
  return {
    async run(action, session, context = {}) {
      const started = performance.now();
      const raw = await spawnHook({ program, args: [...args, action], env, input: JSON.stringify({ action, session, ...context }), timeoutMs, killGraceMs });
      const scrub = (text: string) => redactOwnerIn(redactText(text, secrets), session.ownerId);
      const result = interpret(raw, scrub, timeoutMs);
      result.elapsedMs = Math.round(performance.now() - started);
      const fields = { action, sessionId: session.sessionId, ok: result.ok, elapsedMs: result.elapsedMs };
      if (result.ok) log.debug(fields, 'runtime hook finished');
      else log.warn({ ...fields, error: result.error }, 'runtime hook failed');
      return result;
    },
  };
}

interface RawRun {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  spawnError?: string;
}

interface SpawnOptions {
  program: string;
  args: string[];
  env: Record<string, string>;
  input: string;
  timeoutMs: number;
  killGraceMs: number;
}

function spawnHook({ program, args, env, input, timeoutMs, killGraceMs }: SpawnOptions): Promise<RawRun> {
  return new Promise((resolve) => {
    const child = spawn(program, args, { env, stdio: ['pipe', 'pipe', 'pipe'], shell: false, windowsHide: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let timedOut = false;
    let spawnError: string | undefined;
    const collect = (chunks: Buffer[], size: number, chunk: Buffer): number => {
      if (size < COLLECT_BYTES) chunks.push(chunk.subarray(0, COLLECT_BYTES - size));
      return size + chunk.length;
    };
    child.stdout.on('data', (chunk: Buffer) => (outBytes = collect(out, outBytes, chunk)));
    child.stderr.on('data', (chunk: Buffer) => (errBytes = collect(err, errBytes, chunk)));
    // A hook that exits without reading stdin makes our write fail with EPIPE: not our problem.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
    let kill: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      kill = setTimeout(() => child.kill('SIGKILL'), killGraceMs);
    }, timeoutMs);
    child.on('error', (error: NodeJS.ErrnoException) => (spawnError = error.code ?? error.message));
    // 'close' waits for the pipes too; a grandchild holding them open is cut off by the kill timer.
    child.on('close', (exitCode, signal) => {
      clearTimeout(timer);
      clearTimeout(kill);
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        exitCode,
        signal,
        timedOut,
        spawnError,
      });
    });
  });
}

function interpret(raw: RawRun, scrub: (text: string) => string, timeoutMs: number): HookResult {
  const stderr = raw.stderr.trim() === '' ? undefined : truncate(scrub(raw.stderr), KEEP_CHARS, 'tail');
  const failed = (error: string, output = ''): HookResult => ({ ok: false, output, resources: [], error, ...(stderr ? { stderr } : {}), elapsedMs: 0 });
  if (raw.spawnError !== undefined) return failed(`the runtime hook could not be started (${raw.spawnError})`);
  if (raw.timedOut) return failed(`the runtime hook timed out after ${Math.round(timeoutMs / 100) / 10} s`);
  let answer: { ok?: unknown; output?: unknown; resources?: unknown };
  try {
    answer = JSON.parse(raw.stdout) as typeof answer;
    if (answer === null || typeof answer !== 'object') throw new Error('not an object');
  } catch {
    const what = raw.exitCode !== 0 ? `exited with ${raw.signal ?? `status ${raw.exitCode}`}` : 'printed no JSON object';
    return failed(`the runtime hook ${what}`, truncate(scrub(raw.stdout), KEEP_CHARS, 'tail'));
  }
  const output = typeof answer.output === 'string' ? truncate(scrub(answer.output), KEEP_CHARS, 'tail') : '';
  const resources = Array.isArray(answer.resources) ? answer.resources.slice(0, 1000).map((r) => redactValue(r, scrub, KEEP_CHARS)) : [];
  const ok = answer.ok === true && raw.exitCode === 0;
  const result: HookResult = { ok, output, resources, ...(stderr ? { stderr } : {}), elapsedMs: 0 };
  if (!ok) result.error = answer.ok === true ? `the runtime hook exited with status ${raw.exitCode}` : 'the runtime hook reported failure';
  return result;
}
