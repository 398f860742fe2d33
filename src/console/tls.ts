// Optional TLS on the listener, for deployments with no TLS-terminating balancer. The certificate
// and key are re-read when either file changes (a renewed certificate, a rotated Kubernetes
// secret) and swapped in with setSecureContext: new connections get the new pair, live consoles
// keep theirs, nothing restarts. A bad pair is logged and the old one stays.
import { unwatchFile, watchFile, type Stats } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import type { Server as HttpsServer } from 'node:https';
import type { Logger } from 'pino';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

// stat polling, not inotify: Kubernetes swaps secret volumes by renaming a symlinked directory,
// which a watch on the old inode never sees.
const POLL_MS = 1_000;

/** Reads and checks the pair (a key that does not match the certificate throws here). */
export async function readTlsPair(files: TlsFiles): Promise<{ cert: Buffer; key: Buffer }> {
  const [cert, key] = await Promise.all([readFile(files.certFile), readFile(files.keyFile)]);
  createSecureContext({ cert, key });
  return { cert, key };
}

/** Reloads the pair into `server` whenever a file changes; returns the function that stops watching. */
export function watchTlsPair(server: HttpsServer, files: TlsFiles, log: Logger): () => void {
  let reloading = Promise.resolve();
  const reload = () => {
    reloading = reloading.then(async () => {
      try {
        server.setSecureContext(await readTlsPair(files));
        log.info({ certFile: files.certFile }, 'TLS certificate reloaded');
      } catch (error) {
        // A half-written renewal is common: keep serving the old pair until both files agree.
        log.warn({ certFile: files.certFile, problem: (error as Error).message }, 'TLS certificate reload failed; keeping the previous one');
      }
    });
  };
  const onChange = (now: Stats, before: Stats) => (now.mtimeMs !== before.mtimeMs || now.ino !== before.ino) && reload();
  for (const file of [files.certFile, files.keyFile]) watchFile(file, { interval: POLL_MS, persistent: false }, onChange);
  return () => {
    for (const file of [files.certFile, files.keyFile]) unwatchFile(file, onChange);
  };
}
