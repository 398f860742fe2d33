// Creates a fresh embedded data directory in a short-lived child process. PGlite's initdb grows its
// WebAssembly memory to ~700 MiB and a WASM memory never shrinks, so done in the gateway itself it
// would stay resident for the gateway's whole life; a child that exits gives all of it back.
// The child unpacks the cluster the build prepared (dist/pglite-seed.tgz, scripts/build-seed.mjs),
// several times faster than initdb; without one (a source checkout before the build) it runs initdb.
import { spawn } from 'node:child_process';
import { access } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// The same file from src/db/ (tests) and dist/db/ (the built gateway).
export const SEED = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'pglite-seed.tgz');

// Runs in the child: `node -e SCRIPT <pglite's CommonJS entry> <data dir> [seed]` (a script
// string, so it works the same from the built gateway and from the TypeScript sources under test).
const SCRIPT = `
const [entry, dir, seed] = process.argv.slice(1);
const options = seed ? { loadDataDir: new Blob([require('node:fs').readFileSync(seed)]) } : {};
require(entry).PGlite.create(dir, options)
  .then((pg) => pg.close())
  .then(() => process.exit(0), (error) => { console.error(error); process.exit(1); });
`;

/** True when `dir` already holds a PostgreSQL cluster. */
export async function isInitialised(dir: string): Promise<boolean> {
  return access(join(dir, 'PG_VERSION')).then(
    () => true,
    () => false,
  );
}

/** Makes `dir` a fresh cluster in a child process; throws with the child's last words on failure. */
export function initdbInChild(dir: string): Promise<void> {
  const entry = createRequire(import.meta.url).resolve('@electric-sql/pglite');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', SCRIPT, entry, dir, ...(existsSync(SEED) ? [SEED] : [])], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code === 0) return resolve();
      const last = stderr.trim().split('\n').slice(-3).join(' | ');
      reject(new Error(`initdb exited with ${signal ?? `code ${code}`}${last ? `: ${last}` : ''}`));
    });
  });
}
