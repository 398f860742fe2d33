// Summarises a V8 .cpuprofile (node --cpu-prof): self time by function and by package.
// Usage: node bench/profile-summary.mjs <file.cpuprofile> [top=25]
import { readFileSync } from 'node:fs';

const [file, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/profile-summary.mjs <file.cpuprofile> [top]');
  process.exit(2);
}
const top = Number(topArg ?? 25);
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const selfUs = new Map();
for (let i = 0; i < prof.samples.length; i++) {
  selfUs.set(prof.samples[i], (selfUs.get(prof.samples[i]) ?? 0) + (prof.timeDeltas[i] ?? 0));
}
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
const fn = new Map();
const pkg = new Map();
const where = (url) => {
  if (!url) return '(native/VM)';
  if (url.startsWith('node:')) return 'node core';
  const m = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
  if (m) return m[1];
  const d = url.match(/\/dist\/(.+)$/);
  return d ? `gateway ${d[1]}` : url;
};
for (const [id, us] of selfUs) {
  const n = byId.get(id);
  const cf = n.callFrame;
  const name = cf.functionName || '(anonymous)';
  const loc = cf.url ? `${where(cf.url)}:${cf.lineNumber + 1}` : '';
  const key = `${name} ${loc}`.trim();
  fn.set(key, (fn.get(key) ?? 0) + us);
  const p = ['(idle)', '(program)', '(garbage collector)'].includes(name) ? name : where(cf.url);
  pkg.set(p, (pkg.get(p) ?? 0) + us);
}
const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)}%`;
console.log(`total sampled ${(total / 1e6).toFixed(2)} s`);
console.log('\nby package / file (self time):');
for (const [k, us] of [...pkg].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${pct(us)}  ${k}`);
console.log(`\ntop ${top} functions (self time):`);
for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(us)}  ${k}`);
