#!/usr/bin/env node
// Builds the console page for serving: static/console.js and noVNC bundled into one minified,
// content-hashed script, the stylesheet likewise, and static/console.html rewritten to load them.
// Every file gets a brotli and a gzip twin so the server never compresses on a request.
// Run by `npm run build` (and `prepare`); output in dist/page/, which src/console/page-assets.ts serves.
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const STATIC = join(ROOT, 'static');
const OUT = join(ROOT, 'dist', 'page');
const NOVNC = join(ROOT, 'node_modules', '@novnc', 'novnc');

// console.js imports noVNC as '../novnc/core/rfb.js' (the path the unbundled page is served at);
// here that path is the package in node_modules.
const novncPath = {
  name: 'novnc-path',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/novnc\// }, (args) => ({ path: join(NOVNC, args.path.slice('../novnc/'.length)) }));
  },
};

rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });
const result = await build({
  entryPoints: [join(STATIC, 'console.js'), join(STATIC, 'console.css')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome100', 'firefox100', 'safari15'],
  entryNames: '[name]-[hash]',
  outdir: OUT,
  metafile: true,
  legalComments: 'none',
  banner: { js: '/*! console-gateway console page; bundles noVNC 1.7 (MPL-2.0, source in the @novnc/novnc package) */', css: '' },
  logLevel: 'warning',
  plugins: [novncPath],
});

const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const named = (ext) => {
  const found = outputs.find((f) => f.startsWith('console-') && f.endsWith(ext));
  if (!found) throw new Error(`build-page: no console-*${ext} was produced`);
  return found;
};

// The page itself: the same markup, pointed at the hashed files.
let html = readFileSync(join(STATIC, 'console.html'), 'utf8');
const swap = (pattern, replacement) => {
  if (!pattern.test(html)) throw new Error(`build-page: static/console.html no longer matches ${pattern}`);
  html = html.replace(pattern, replacement);
};
swap(/href="\.\/static\/console\.css"/, `href="./assets/${named('.css')}"`);
swap(/<script type="module" src="\.\/static\/console\.js"><\/script>/, `<script type="module" src="./assets/${named('.js')}"></script>`);
writeFileSync(join(OUT, 'console.html'), html);

for (const file of readdirSync(OUT)) {
  const body = readFileSync(join(OUT, file));
  writeFileSync(join(OUT, `${file}.br`), brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: body.length } }));
  writeFileSync(join(OUT, `${file}.gz`), gzipSync(body, { level: 9 }));
}
const size = (f) => `${(readFileSync(join(OUT, f)).length / 1024).toFixed(0)} KiB`;
const js = named('.js');
process.stderr.write(`build-page: dist/page/${js} ${size(js)} (${size(`${js}.br`)} brotli, ${size(`${js}.gz`)} gzip)\n`);
