// A/B of two builds' connect path: gateway CPU per connect at a fixed offered rate, where the full
// bench measures at saturation (where group commit batches the most). Each build runs as its own
// gateway beside the other, on the same machine at the same time, in alternating rounds.
//
//   node bench/connect-ab.mjs save before          # copy dist/ to bench/results/builds/before
//   ... change, npm run build ...
//   node bench/connect-ab.mjs before current       # "current" is dist/ itself
//
// Options (env): BENCH_AB_RATE (connects/s offered, 500), BENCH_AB_SECONDS (per round, 4),
// BENCH_AB_ROUNDS (4), BENCH_AB_WARM_SECONDS (warm-up at the same rate, 2), BENCH_AB_EMBEDDED=1
// (the embedded database instead of a private PostgreSQL, whose CPU per connect is printed too).
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuOf, median, sleep, startListening, startProcess, stopAll, tree, waitJsonPort } from './lib.mjs';
import { createDatabase, startPostgres } from './postgres.mjs';
import { connectWs } from './ws-client.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..');
const BUILDS = join(HERE, 'results', 'builds');
const env = process.env;
const num = (name, fallback) => (env[name] === undefined ? fallback : Number(env[name]));

const [first, second] = process.argv.slice(2);
if (first === 'save' && second) {
  const to = join(BUILDS, second);
  rmSync(to, { recursive: true, force: true });
  cpSync(join(ROOT, 'dist'), join(to, 'dist'), { recursive: true });
  // The build finds its static files beside dist/; node_modules is found up the tree.
  symlinkSync(join(ROOT, 'static'), join(to, 'static'));
  console.log(`saved dist/ as ${to}`);
  process.exit(0);
}
if (!first || !second) {
  console.error('usage: node bench/connect-ab.mjs save <name> | node bench/connect-ab.mjs <nameA|current> <nameB|current>');
  process.exit(2);
}
const cliOf = (name) => (name === 'current' ? join(ROOT, 'dist', 'cli.js') : join(BUILDS, name, 'dist', 'cli.js'));
for (const name of [first, second]) if (!existsSync(cliOf(name))) throw new Error(`no build ${name}: save it first`);

const rate = num('BENCH_AB_RATE', 500);
const seconds = num('BENCH_AB_SECONDS', 4);
const rounds = num('BENCH_AB_ROUNDS', 4);
// At 100 connects/s V8 is still compiling the connect path a minute in: a short warm-up compares
// builds, a long one (60 s) gives the steady cost a gateway that runs for days pays.
const warmSeconds = num('BENCH_AB_WARM_SECONDS', 2);
const embedded = env.BENCH_AB_EMBEDDED === '1';
const SECRET = randomBytes(32).toString('hex');
const CONTROL = randomBytes(16).toString('hex');
const { mintTicket } = await import(join(ROOT, 'dist', 'console', 'ticket.js'));

process.on('SIGINT', () => void stopAll().then(() => process.exit(130)));
try {
  const vmPort = await waitJsonPort(startProcess('vm', [process.execPath, join(HERE, 'vm-server.mjs')]));
  const postgres = embedded ? undefined : await startPostgres({ startProcess, sleep });
  const work = mkdtempSync(join(tmpdir(), 'cgw-ab-'));
  const gateways = {};
  for (const [key, name] of [['A', first], ['B', second]]) {
    const gwEnv = {
      PATH: env.PATH,
      HOME: env.HOME,
      HOST: '127.0.0.1',
      TICKET_SECRET: SECRET,
      CONTROL_TOKEN: CONTROL,
      TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
      NOVNC_READY_GATING_ENABLED: 'false',
      LOG_LEVEL: 'warn',
      MAX_CONSOLES_PER_CLIENT: '0',
      MAX_CONSOLES_PER_SESSION: '0',
      FAILED_UPGRADES_PER_MINUTE: '0',
      OPS_PORT: '0',
      ...(embedded ? { DATA_DIR: join(work, key) } : { DATABASE_URL: await createDatabase(postgres.url, `ab_${key.toLowerCase()}`) }),
    };
    const gw = await startListening(`gateway-${name}`, (port) => ['env', `PORT=${port}`, process.execPath, cliOf(name), 'serve'], { env: gwEnv, pidsOf: (p) => [p.pid], timeoutMs: 180_000 });
    const sessions = [];
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`http://127.0.0.1:${gw.port}/api/v1/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' },
        body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port: vmPort } }),
      });
      sessions.push((await res.json()).id);
    }
    gateways[key] = { name, gw, sessions };
  }
  const dbPids = () => (postgres ? tree(postgres.server.pid) : []);

  /** Offers `rate` connects/s for `secs` (each: ticket, handshake, the VM's first byte, close). */
  const round = async ({ gw, sessions }, secs) => {
    const n = Math.ceil(rate * secs);
    const tickets = [];
    for (let i = 0; i < n; i++) tickets.push((await mintTicket({ sessionId: sessions[i % sessions.length], key: SECRET, ttlSeconds: 300 })).ticket);
    await sleep(200);
    const cpu0 = cpuOf([gw.pid]);
    const db0 = cpuOf(dbPids());
    let ok = 0;
    let failed = 0;
    const one = (ticket) =>
      new Promise((resolve) => {
        let conn;
        let settled = false;
        const done = (good) => {
          if (settled) return;
          settled = true;
          good ? ok++ : failed++;
          conn?.socket.destroy();
          resolve();
        };
        // The VM's first byte often arrives in the same read as the 101, so onData runs before
        // connectWs resolves: the socket is closed here then, or the console would stay open.
        connectWs(`ws://127.0.0.1:${gw.port}/websockify?ticket=${ticket}`, { onData: () => done(true), onClose: () => done(false) }).then(
          (c) => {
            conn = c;
            if (settled) c.socket.destroy();
          },
          () => done(false),
        );
      });
    const all = [];
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const wait = t0 + (i * 1000) / rate - performance.now();
      if (wait > 1) await sleep(wait);
      all.push(one(tickets[i]));
    }
    await Promise.all(all);
    await sleep(300);
    return { cpuMs: ((cpuOf([gw.pid]) - cpu0) * 1000) / ok, dbMs: ((cpuOf(dbPids()) - db0) * 1000) / ok, ok, failed };
  };

  for (const key of ['A', 'B']) await round(gateways[key], warmSeconds); // warm-up: the JIT compiles the connect path
  const runs = { A: [], B: [] };
  for (let r = 0; r < rounds; r++) {
    for (const key of r % 2 ? ['B', 'A'] : ['A', 'B']) {
      const result = await round(gateways[key], seconds);
      runs[key].push(result);
      console.error(`[ab] round ${r + 1} ${gateways[key].name}: ${result.cpuMs.toFixed(2)} ms/connect, failed ${result.failed}`);
    }
  }
  const med = (key, field) => median(runs[key].map((r) => r[field]));
  console.log(`gateway CPU per connect at ${rate} connects/s offered after a ${warmSeconds} s warm-up, ${embedded ? 'embedded database' : 'PostgreSQL'}, medians of ${rounds} rounds`);
  for (const key of ['A', 'B']) {
    const db = embedded ? '' : `; PostgreSQL ${med(key, 'dbMs').toFixed(2)} ms`;
    console.log(`  ${gateways[key].name.padEnd(12)} ${med(key, 'cpuMs').toFixed(2)} ms (rounds ${runs[key].map((r) => r.cpuMs.toFixed(2)).join(', ')})${db}`);
  }
  console.log(`  ${second}/${first}: ${(med('B', 'cpuMs') / med('A', 'cpuMs')).toFixed(2)}×${embedded ? '' : `; PostgreSQL ${(med('B', 'dbMs') / med('A', 'dbMs')).toFixed(2)}×`}`);
  postgres?.remove();
  rmSync(work, { recursive: true, force: true });
} finally {
  await stopAll();
}
