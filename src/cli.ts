#!/usr/bin/env node
// The one executable, `console-gateway <command>`. Every command but `demo` (which prints a console
// link for a person) prints JSON on success; bad arguments exit 2 with one clear line, other
// failures (bad input, an unreachable database) exit non-zero with one.
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { loadConfig, ConfigError, type Config } from './config.js';
import { createLogger } from './ops/log.js';
import { createTickets, openDatabase, startGateOnly, startReconcileOnly, startServe } from './app.js';
import { runPass } from './fleet/reconciler.js';
import { callAdminSocket } from './control/admin-socket.js';
import { runOperatorCommand, type OperatorCommand, type OperatorDeps, type OperatorRequest } from './control/operator-commands.js';
import { runtimeHookFromConfig } from './fleet/runtime-hook.js';
import { claimMsFor, cleanupSession } from './fleet/cleanup.js';
import { actorName } from './db/audit.js';
import { migrateToLatest } from './db/migrations.js';
import { openStore } from './db/open.js';
import { GatewayError } from './errors.js';
import { runDemo } from './demo/demo.js';

const USAGE = `usage: console-gateway <command>
  serve                               HTTP + WebSocket gateway (with the readiness gate)
  gate                                the readiness gate alone (sidecar)
  migrate                             bring the database schema to the latest version
  session create --protocol vnc|websockify [--id UUID] [--owner ID] [TARGET]
  session target ID TARGET
      TARGET: --host H --port P [--path P] [--no-web-root]   (--no-web-root: websockify, no noVNC pages)
          or: --socket /abs/path                            (vnc on a unix socket)
      and for vnc: [--password-file F | --password-stdin]    (stored VNC credentials)
  session stop ID
  ticket ID [--ttl SECONDS] [--view-only | --exclusive]
  diagnose ID                         admin diagnostics; exit 0 when healthy
  reconcile [--once] [--dry-run]      the reconciliation worker; --once: one pass, its JSON summary, exit 1 if an action failed
  ports status|list|allocate ID|release ID   the port pool; allocate renews a held lease; exhausted: exit 3
  demo                                serve + a demo VNC server + a ready session`;

class UsageError extends Error {}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

async function targetFrom(values: Record<string, unknown>, required: boolean): Promise<Record<string, unknown> | undefined> {
  const { host, port, path, socket } = values as { host?: string; port?: string; path?: string; socket?: string };
  const webRoot = values['no-web-root'] === true ? { webRoot: false } : {};
  if (socket !== undefined) {
    if (host !== undefined || port !== undefined || path !== undefined) throw new UsageError('--socket stands alone: no --host, --port or --path');
    return { socket, ...webRoot, ...(await credentialsFrom(values)) };
  }
  if (host === undefined && port === undefined) {
    if (required) throw new UsageError('--host and --port (or --socket) are required');
    if (values['password-file'] !== undefined || values['password-stdin']) throw new UsageError('a password goes with --host and --port');
    if (values['no-web-root'] === true) throw new UsageError('--no-web-root needs --host and --port');
    return undefined;
  }
  if (host === undefined || port === undefined) throw new UsageError('--host and --port go together');
  if (!/^\d+$/.test(port)) throw new UsageError('--port must be a number');
  return { host, port: Number(port), ...(path !== undefined ? { path } : {}), ...webRoot, ...(await credentialsFrom(values)) };
}

async function credentialsFrom(values: Record<string, unknown>): Promise<{ credentials?: { password: string } }> {
  const password = await passwordFrom(values);
  return password !== undefined ? { credentials: { password } } : {};
}

/** The VNC password from a file or stdin, never from argv (where `ps` and shell history see it). */
async function passwordFrom(values: Record<string, unknown>): Promise<string | undefined> {
  const file = values['password-file'] as string | undefined;
  if (file !== undefined && values['password-stdin']) throw new UsageError('use --password-file or --password-stdin, not both');
  let text: string;
  if (file !== undefined) {
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      throw new UsageError(`--password-file ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  } else if (values['password-stdin']) {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    text = Buffer.concat(chunks).toString('utf8');
  } else {
    return undefined;
  }
  // One trailing newline is the file's or the pipe's, not the password's.
  const password = text.replace(/\r?\n$/, '');
  if (password === '') throw new UsageError('the password is empty');
  return password;
}

/**
 * Runs an operator command and prints its output: through a running `serve`'s admin socket when
 * one holds the embedded database, otherwise against the database directly.
 */
async function operate(config: Config, request: OperatorRequest): Promise<number> {
  const remote = config.databaseUrl === undefined ? await callAdminSocket(config.dataDir, request) : undefined;
  const result = remote ?? (await withOperatorDeps(config, (deps) => runOperatorCommand(deps, request)));
  print(result.output);
  return result.exitCode;
}

async function withOperatorDeps<T>(config: Config, run: (deps: OperatorDeps) => Promise<T>): Promise<T> {
  const silent = createLogger('silent');
  const log = createLogger(config.logLevel, process.stderr);
  const store = await openDatabase(config, silent);
  try {
    const hook = runtimeHookFromConfig(config, silent);
    const cleanupDeps = { db: store.db, log, actor: actorName('cli'), claimMs: claimMsFor(config.runtimeHookTimeoutSeconds), ...(hook ? { hook } : {}) };
    const control = { config, db: store.db, tickets: await createTickets(config, store), cleanup: (id: string, reason?: string) => cleanupSession(cleanupDeps, id, reason) };
    return await run({
      control,
      ...(hook ? { hook } : {}),
      publicUrl: config.publicUrl ?? `http://localhost:${config.port}`,
      reconcile: (dryRun) => runPass({ db: store.db, kind: store.kind, config, log, ...(hook ? { hook } : {}) }, { dryRun }),
    });
  } finally {
    await store.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const [command, sub, ...rest] = argv;
  const options = {
    protocol: { type: 'string' },
    id: { type: 'string' },
    owner: { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    path: { type: 'string' },
    socket: { type: 'string' },
    'no-web-root': { type: 'boolean' },
    ttl: { type: 'string' },
    'view-only': { type: 'boolean' },
    exclusive: { type: 'boolean' },
    once: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    'password-file': { type: 'string' },
    'password-stdin': { type: 'boolean' },
  } as const;
  // Each command takes only its own options: anything else is refused, never silently ignored.
  const parse = (args: string[], allowed: readonly (keyof typeof options)[], positionals = true) => {
    const own = Object.fromEntries(allowed.map((name) => [name, options[name]])) as typeof options;
    try {
      return parseArgs({ args, options: own, allowPositionals: positionals, strict: true });
    } catch (error) {
      const label = (command === 'session' || command === 'ports') && sub !== undefined ? `${command} ${sub}` : command;
      throw new UsageError(usageProblem(label, error as NodeJS.ErrnoException));
    }
  };
  const target = ['host', 'port', 'path', 'no-web-root', 'socket', 'password-file', 'password-stdin'] as const;

  switch (command) {
    case 'serve': {
      parse(argv.slice(1), [], false);
      const config = loadConfig(process.env, { tickets: true });
      const log = createLogger(config.logLevel);
      const running = await startServe(config, log);
      await untilSignal();
      await running.stop();
      return 0;
    }
    case 'gate': {
      parse(argv.slice(1), [], false);
      const config = loadConfig();
      const gate = await startGateOnly(config, createLogger(config.logLevel));
      await untilSignal();
      await gate.stop();
      return 0;
    }
    case 'reconcile': {
      const { values } = parse(argv.slice(1), ['once', 'dry-run'], false);
      const config = loadConfig();
      const dryRun = values['dry-run'] === true;
      if (values.once) return operate(config, { command: 'reconcile', dryRun });
      const running = await startReconcileOnly(config, createLogger(config.logLevel), dryRun);
      await untilSignal();
      await running.stop();
      return 0;
    }
    case 'diagnose': {
      const config = loadConfig();
      const id = parse(argv.slice(1), []).positionals;
      if (id.length !== 1) throw new UsageError('diagnose takes one session ID');
      return operate(config, { command: 'diagnose', id: id[0]! });
    }
    case 'demo': {
      parse(argv.slice(1), [], false);
      await runDemo(process.env, (url) => process.stdout.write(`\nOpen the console: ${url}\n`), waitForEnter, untilSignal);
      return 0;
    }
    case 'migrate': {
      parse(argv.slice(1), [], false);
      const config = loadConfig();
      const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log: createLogger('silent') });
      try {
        const result = await migrateToLatest(store.db);
        print({ applied: (result.results ?? []).map((r) => r.migrationName) });
      } finally {
        await store.close();
      }
      return 0;
    }
    case 'session': {
      const allowed = sub === 'create' ? (['protocol', 'id', 'owner', ...target] as const) : sub === 'target' ? target : [];
      const { values, positionals } = parse(rest, allowed);
      const config = loadConfig(process.env, { tickets: false });
      if (sub === 'create') {
        if (positionals.length > 0) throw new UsageError(`unexpected argument: ${positionals[0]}`);
        if (values.protocol === undefined) throw new UsageError('--protocol vnc|websockify is required');
        const target = await targetFrom(values, false);
        const body = {
          protocol: values.protocol,
          ...(values.id !== undefined ? { id: values.id } : {}),
          ...(values.owner !== undefined ? { ownerId: values.owner } : {}),
          ...(target ? { target } : {}),
        };
        return operate(config, { command: 'session-create', body });
      }
      const id = positionals[0];
      if (id === undefined || positionals.length > 1) throw new UsageError(`session ${sub ?? '<create|target|stop>'} takes one session ID`);
      if (sub === 'target') {
        return operate(config, { command: 'session-target', id, body: (await targetFrom(values, true))! });
      }
      if (sub === 'stop') return operate(config, { command: 'session-stop', id });
      throw new UsageError(`unknown session command: ${sub ?? '(none)'}`);
    }
    case 'ticket': {
      const { values, positionals } = parse(argv.slice(1), ['ttl', 'view-only', 'exclusive']);
      const config = loadConfig(process.env, { tickets: true });
      const id = positionals[0];
      if (id === undefined || positionals.length > 1) throw new UsageError('ticket takes one session ID');
      if (values.ttl !== undefined && !/^\d+$/.test(values.ttl)) throw new UsageError('--ttl must be a whole number of seconds');
      const body = { ...(values.ttl !== undefined ? { ttlSeconds: Number(values.ttl) } : {}), ...(values['view-only'] ? { viewOnly: true } : {}), ...(values.exclusive ? { exclusive: true } : {}) };
      return operate(config, { command: 'ticket', id, body });
    }
    case 'ports': {
      const { positionals } = parse(rest, []);
      const config = loadConfig();
      const usage = 'ports status | ports list | ports allocate ID | ports release ID';
      if (!(((sub === 'status' || sub === 'list') && positionals.length === 0) || ((sub === 'allocate' || sub === 'release') && positionals.length === 1))) {
        throw new UsageError(usage);
      }
      return operate(config, { command: `ports-${sub}` as OperatorCommand, ...(positionals[0] !== undefined ? { id: positionals[0] } : {}) });
    }
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(`${USAGE}\n`);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command: ${command}`);
  }
}

/** One line naming what was wrong in a command's arguments. */
function usageProblem(command: string | undefined, error: NodeJS.ErrnoException): string {
  const quoted = /'([^']+)'/.exec(error.message)?.[1];
  if (error.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return `${command} does not take the option ${quoted ?? ''}`.trim();
  if (error.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') return `${command} takes no arguments, got "${quoted ?? ''}"`;
  return error.message.split('.')[0]!;
}

function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
}

/** Calls `onEnter` each time Enter is pressed on an interactive terminal. */
function waitForEnter(onEnter: () => void): () => void {
  if (!process.stdin.isTTY) return () => {};
  const rl = createInterface({ input: process.stdin });
  rl.on('line', onEnter);
  return () => rl.close();
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError) process.stderr.write(`console-gateway: ${error.message}\n${USAGE}\n`);
    else if (error instanceof ConfigError || error instanceof GatewayError) process.stderr.write(`console-gateway: ${error.message}\n`);
    else process.stderr.write(`console-gateway: ${(error as Error).message?.split('\n')[0] ?? String(error)}\n`);
    // 3: the port pool is exhausted, so a provisioning script can tell "try later" from "broken".
    process.exit(error instanceof UsageError ? 2 : error instanceof GatewayError && error.code === 'PORTS_EXHAUSTED' ? 3 : 1);
  },
);
