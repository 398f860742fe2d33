#!/usr/bin/env node
// Prepares the embedded database's starting point at build time: an empty PGlite cluster (initdb's
// output) as a tarball, dist/pglite-seed.tgz. A gateway with a fresh DATA_DIR unpacks it instead of
// running initdb, which is the slow part of a first start (seconds, and ~700 MiB of WASM memory,
// which is why the unpacking too runs in a child process; see src/db/pglite-initdb.ts).
// Skipped when the seed for the installed PGlite version is already there.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const SEED = join(ROOT, 'dist', 'pglite-seed.tgz');
const STAMP = `${SEED}.version`;
const version = JSON.parse(readFileSync(join(ROOT, 'node_modules', '@electric-sql', 'pglite', 'package.json'), 'utf8')).version;

if (existsSync(SEED) && existsSync(STAMP) && readFileSync(STAMP, 'utf8') === version) process.exit(0);
const dir = mkdtempSync(join(tmpdir(), 'cg-seed-'));
try {
  const pg = await PGlite.create(join(dir, 'pglite'));
  const tarball = await pg.dumpDataDir('gzip');
  await pg.close();
  mkdirSync(dirname(SEED), { recursive: true });
  writeFileSync(SEED, Buffer.from(await tarball.arrayBuffer()));
  writeFileSync(STAMP, version);
  process.stderr.write(`build-seed: dist/pglite-seed.tgz for PGlite ${version}\n`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
