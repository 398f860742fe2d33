// The local admin channel: while `serve` holds the embedded database (one process's files), the
// CLI's operator commands reach it over a unix socket in DATA_DIR instead of refusing. The socket
// is created mode 0600 (the umask is narrowed around the bind, then the mode is set again), so
// only the user running the gateway (and root) can connect; there is no token, the file mode is
// the credential. HTTP/1.1 with JSON, one request per command: POST /v1/commands
// {command, id?, body?, dryRun?} → 200 {output, exitCode}, or {error: {code, message}}.
import { chmod, rm } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { GatewayError, toGatewayError, type ErrorCode, CATALOGUE } from '../errors.js';
import { runOperatorCommand, type OperatorDeps, type OperatorRequest, type OperatorResult } from './operator-commands.js';

export const ADMIN_SOCKET_NAME = 'console-gateway.sock';
const MAX_BODY_BYTES = 64 * 1024;
/** A diagnose probe, a reconciler pass with its hooks: generous, but never forever. */
const CALL_TIMEOUT_MS = 10 * 60_000;

export function adminSocketPath(dataDir: string): string {
  return join(resolve(dataDir), ADMIN_SOCKET_NAME);
}

export interface AdminSocket {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Listens on DATA_DIR/console-gateway.sock. The caller holds the data directory's lock, so a socket
 * file already there is a dead server's and is replaced.
 */
export async function startAdminSocket(dataDir: string, deps: OperatorDeps, log: Logger): Promise<AdminSocket> {
  const path = adminSocketPath(dataDir);
  await rm(path, { force: true });
  const server = createServer((req, res) => void handle(deps, log, req, res));
  const previous = process.umask(0o177);
  try {
    // The bind happens within listen() on the primary process, so the narrowed umask applies.
    await new Promise<void>((resolvePromise, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolvePromise();
      });
    });
  } finally {
    process.umask(previous);
  }
  await chmod(path, 0o600);
  log.info({ path }, 'admin socket listening (operator commands beside the embedded database)');
  return {
    path,
    async close() {
      await new Promise((r) => server.close(r));
      server.closeAllConnections();
      await rm(path, { force: true });
    },
  };
}

async function handle(deps: OperatorDeps, log: Logger, req: IncomingMessage, res: ServerResponse): Promise<void> {
  try {
    if (req.method !== 'POST' || req.url !== '/v1/commands') throw new GatewayError('NOT_FOUND', 'POST /v1/commands');
    const request = (await readBody(req)) as OperatorRequest;
    const result = await runOperatorCommand(deps, request);
    log.info({ command: request.command, sessionId: request.id, exitCode: result.exitCode }, 'operator command over the admin socket');
    reply(res, 200, result);
  } catch (error) {
    const failure = toGatewayError(error);
    if (failure.code === 'INTERNAL') log.error({ err: failure.cause }, 'operator command failed');
    reply(res, failure.status, { error: { code: failure.code, message: failure.message } });
  }
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > MAX_BODY_BYTES) throw new GatewayError('PAYLOAD_TOO_LARGE', 'operator command too large');
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new GatewayError('BAD_REQUEST', 'the operator command is not valid JSON');
  }
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * Sends the command to a running `serve` over DATA_DIR's admin socket. Undefined when no server
 * listens there (no socket file, or a stale one): the caller opens the database itself. A refusal
 * from the server is thrown as the GatewayError it answered.
 */
export function callAdminSocket(dataDir: string, command: OperatorRequest): Promise<OperatorResult | undefined> {
  const body = JSON.stringify(command);
  return new Promise((resolvePromise, reject) => {
    const req = request(
      { socketPath: adminSocketPath(dataDir), path: '/v1/commands', method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }, timeout: CALL_TIMEOUT_MS },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          try {
            const answer = JSON.parse(text) as OperatorResult & { error?: { code: string; message: string } };
            if (answer.error === undefined) return resolvePromise(answer);
            const code = (Object.hasOwn(CATALOGUE, answer.error.code) ? answer.error.code : 'INTERNAL') as ErrorCode;
            reject(new GatewayError(code, answer.error.message));
          } catch {
            reject(new Error('the running gateway answered the admin socket with something that is not JSON'));
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('the running gateway did not answer the admin socket in time')));
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') resolvePromise(undefined);
      else reject(error);
    });
    req.end(body);
  });
}
