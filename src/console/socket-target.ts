// Which unix sockets the gateway may dial (TARGET_ALLOWED_SOCKET_DIRS): the same "resolve, check,
// then dial" discipline as for addresses. The path is resolved to its real path (every symlink
// followed), the real directory is checked against the real allowed directories, and the caller
// dials the resolved path, never the name it was given: a symlink inside an allowed directory that
// leads out of it is refused with TARGET_FORBIDDEN and never dialled.
//
// What this cannot close: someone who can write inside an allowed directory can swap a checked
// path for a symlink between the check and the connect. The allowed directories are the
// platform's own (where it creates the VMs' sockets), not a tenant's.
import { realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, normalize, relative } from 'node:path';
import { GatewayError } from '../errors.js';

/** True when `dir` is `root` or lies below it; both absolute and normalized. */
export function isInside(dir: string, root: string): boolean {
  const rel = relative(root, dir);
  return rel === '' || !(rel === '..' || rel.startsWith('../') || isAbsolute(rel));
}

const forbidden = (how: string) => new GatewayError('TARGET_FORBIDDEN', `the VM console socket ${how} TARGET_ALLOWED_SOCKET_DIRS`);

/** The real paths of the allowed directories that exist. */
async function realRoots(dirs: readonly string[]): Promise<string[]> {
  const found = await Promise.all(dirs.map((dir) => realpath(dir).catch(() => undefined)));
  return found.filter((dir): dir is string => dir !== undefined);
}

/** realpath, with a missing file as `undefined` and any other failure as DIAL_FAILED. */
async function real(path: string): Promise<string | undefined> {
  try {
    return await realpath(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new GatewayError('DIAL_FAILED', `the VM console socket could not be resolved (${code ?? 'error'})`, { cause: error });
  }
}

/**
 * Resolves a `vnc` target's socket path and checks it; returns the real path to dial.
 * TARGET_FORBIDDEN when unix-socket targets are off, the path is relative, or it lies (or leads
 * through a symlink) outside the allowed directories; DIAL_FAILED when no socket is there (yet).
 */
export async function resolveSocketTarget(path: string, allowedDirs: readonly string[]): Promise<string> {
  if (allowedDirs.length === 0) {
    throw new GatewayError('TARGET_FORBIDDEN', 'unix-socket targets are disabled: TARGET_ALLOWED_SOCKET_DIRS is empty');
  }
  if (!isAbsolute(path)) throw new GatewayError('TARGET_FORBIDDEN', 'the VM console socket must be an absolute path');
  const roots = await realRoots(allowedDirs);
  const allowed = (dir: string) => roots.some((root) => isInside(dir, root));
  // As written, before any symlink: decides only which refusal a person reads, and that a
  // missing directory outside is "forbidden" rather than "missing" (no probing of the host's tree).
  const namedInside = [...allowedDirs, ...roots].some((root) => isInside(dirname(normalize(path)), root));
  const outside = forbidden(namedInside ? 'leads through a symlink outside' : 'is outside');

  const directory = await real(dirname(path));
  if (directory === undefined) {
    if (!namedInside) throw outside;
    throw new GatewayError('DIAL_FAILED', 'the directory of the VM console socket does not exist');
  }
  if (!allowed(directory)) throw outside;
  const socket = await real(path);
  if (socket === undefined) throw new GatewayError('DIAL_FAILED', 'the VM console socket does not exist (yet)');
  if (!allowed(dirname(socket))) throw forbidden('leads through a symlink outside');
  if (!(await stat(socket).catch(() => undefined))?.isSocket()) throw new GatewayError('DIAL_FAILED', 'the VM console path is not a unix socket');
  return socket;
}
