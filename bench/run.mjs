#!/usr/bin/env node
// console-gateway benchmark: the gateway beside Debian websockify, nginx and plain TCP, in one run.
// Usage: npm run build && node bench/run.mjs        (BENCH_QUICK=1 for a ~1-minute smoke run)
// See bench/README.md for what each number means and the aims.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDatabase, startPostgres } from './postgres.mjs';
import { expectedSha256 } from './stream.mjs';
import { connectTcp, connectWs } from './ws-client.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..');

// Re-exec once with the file-descriptor limit raised to the hard limit (thousands of sockets).
if (!process.env.BENCH_REEXEC) {
  const child = spawn('bash', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'bash', process.execPath, ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, BENCH_REEXEC: '1' },
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
} else {
  await main();
}

async function main() {
  const lib = await import('./lib.mjs');
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  const { mintTicket } = await import('../dist/console/ticket.js');
  const { startProcess, startListening, stopProcess, stopAll, tree, cpuOf, cpuSplitOf, rssKiB, pssKiB, sleep, median, percentile, childrenOf, waitJsonPort } = lib;

  // ------------------------------------------------------------------------- configuration
  const env = process.env;
  const QUICK = env.BENCH_QUICK === '1';
  const num = (name, full, quick) => (env[name] !== undefined ? Number(env[name]) : QUICK ? quick : full);
  const MiB = 1024 * 1024;
  const GiB = 1024 * MiB;
  const cfg = {
    quick: QUICK,
    reps: num('BENCH_REPS', 5, 3),
    downMiB: num('BENCH_DOWN_MIB', 256, 96),
    upMiB: num('BENCH_UP_MIB', 128, 48),
    upFrameBytes: num('BENCH_UP_FRAME', 64 * 1024, 64 * 1024),
    rttCount: num('BENCH_RTT_N', 2000, 300),
    rttBytes: 32,
    connectSeconds: num('BENCH_CONNECT_SECONDS', 3, 1),
    connectWarmSeconds: num('BENCH_CONNECT_WARM_SECONDS', 2, 1),
    connectConcurrency: num('BENCH_CONNECT_CONCURRENCY', 100, 100),
    connectSessions: num('BENCH_CONNECT_SESSIONS', 100, 100),
    checksumMiB: num('BENCH_CHECKSUM_MIB', 1024, 64),
    firstFrameReps: num('BENCH_FIRST_FRAME_REPS', 5, 2),
    postgres: env.BENCH_POSTGRES !== '0',
    idleCounts: (env.BENCH_IDLE_COUNTS ?? (QUICK ? '200,1000' : '1000,10000')).split(',').map(Number),
    idleStarts: num('BENCH_IDLE_STARTS', 5, 1),
    websockifyIdle: num('BENCH_WEBSOCKIFY_IDLE', 500, 100), // Debian websockify 0.10 refuses (1006) beyond ~508 concurrent consoles per instance
    cpuProfile: env.BENCH_CPU_PROFILE === '1',
    phases: new Set((env.BENCH_PHASES ?? 'firstframe,down,up,rtt,checksum,connects,idle,idlewsf').split(',')),
    modes: new Set((env.BENCH_MODES ?? 'raw,websockifyTarget').split(',')),
    databaseUrl: env.BENCH_DATABASE_URL,
  };
  // Each idle gateway console holds two descriptors (browser + VM); the client holds one per console.
  const nofile = lib.softNofile();
  const maxIdle = Math.floor((nofile - 256) / 2);
  const idleCounts = cfg.idleCounts.map((n) => ({ requested: n, measured: Math.min(n, maxIdle) }));

  const ts = new Date().toISOString().replace(/[:.]/g, '-');
  const work = mkdtempSync(join(tmpdir(), 'cgw-bench-'));
  const log = (...a) => process.stderr.write(`[bench] ${a.join(' ')}\n`);
  const results = { startedAt: new Date().toISOString(), config: { ...cfg, nofile, idleCounts }, host: hostInfo(), raw: {}, websockifyTarget: {}, idle: {}, notes: [] };

  let pgAdmin; // a private PostgreSQL cluster, when postgresql-15 is installed
  try {
    // ----------------------------------------------------------------------- peers
    const vm = startProcess('vm', [process.execPath, join(HERE, 'vm-server.mjs')]);
    const vmPort = await waitJsonPort(vm);
    log(`VM server pid ${vm.pid} on 127.0.0.1:${vmPort}`);

    const SECRET = randomBytes(32).toString('hex');
    const CONTROL = randomBytes(16).toString('hex');
    const gwEnv = (dataDir, databaseUrl = cfg.databaseUrl) => ({
      ...cleanEnv(),
      HOST: '127.0.0.1',
      TICKET_SECRET: SECRET,
      CONTROL_TOKEN: CONTROL,
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : { DATA_DIR: dataDir }),
      TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
      NOVNC_READY_GATING_ENABLED: 'false',
      LOG_LEVEL: env.BENCH_GATEWAY_LOG_LEVEL ?? 'warn',
      MAX_CONSOLES: '20000',
      // The bench is one client address opening thousands of consoles on one session: no per-client,
      // per-session or failed-upgrade limits.
      MAX_CONSOLES_PER_CLIENT: '0',
      MAX_CONSOLES_PER_SESSION: '0',
      FAILED_UPGRADES_PER_MINUTE: '0',
      OPS_PORT: '0',
    });
    // startListening passes the port to makeArgv; the gateway takes it from PORT, so wrap env per attempt.
    const startGw = async (label, profileDir, extraNodeArgs = [], databaseUrl = undefined) => {
      const dataDir = join(work, `db-${label}`);
      mkdirSync(dataDir, { recursive: true });
      const nodeArgs = [...extraNodeArgs, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [])];
      // Written by bench/gc-on-signal.cjs (idle-memory gateways only) after each full GC.
      const memoryFile = join(work, `memory-${label}.json`);
      const proc = await startListening(`gateway-${label}`, (port) => ['env', `PORT=${port}`, process.execPath, ...nodeArgs, join(ROOT, 'dist/cli.js'), 'serve'], {
        env: { ...gwEnv(dataDir, databaseUrl), BENCH_MEMORY_FILE: memoryFile },
        pidsOf: (p) => [p.pid],
        // A fresh embedded data directory is unpacked first: seconds, more on a busy machine.
        timeoutMs: 180_000,
      });
      return Object.assign(proc, { memoryFile });
    };

    const profileDir = cfg.cpuProfile ? join(HERE, 'results', `profile-${ts}`) : undefined;
    const gw = await startGw('main', profileDir, (env.BENCH_GATEWAY_NODE_ARGS ?? '').split(' ').filter(Boolean));
    log(`gateway pid ${gw.pid} on 127.0.0.1:${gw.port}`);
    const api = async (method, path, body) => {
      const res = await fetch(`http://127.0.0.1:${gw.port}${path}`, {
        method,
        headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${path} → ${res.status} ${text}`);
      return JSON.parse(text);
    };
    const vncSession = await api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: vmPort } });

    // The same gateway on PostgreSQL (a private cluster with default durability), for connects/s
    // and memory on both databases.
    let gwPg;
    let pgSession;
    let pgDatabases = 0;
    const freshPgDatabase = async () => createDatabase(pgAdmin.url, `bench_${++pgDatabases}`);
    if (cfg.postgres && !cfg.databaseUrl && existsSync('/usr/lib/postgresql/15/bin/postgres')) {
      pgAdmin = await startPostgres(lib);
      gwPg = await startGw('pg', profileDir && join(profileDir, 'pg'), (env.BENCH_GATEWAY_NODE_ARGS ?? '').split(' ').filter(Boolean), await freshPgDatabase());
      pgSession = await (await fetch(`http://127.0.0.1:${gwPg.port}/api/v1/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' },
        body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port: vmPort } }),
      })).json();
      log(`PostgreSQL pid ${pgAdmin.server.pid}; gateway on it pid ${gwPg.pid} on 127.0.0.1:${gwPg.port}`);
    } else {
      results.notes.push('no PostgreSQL run (BENCH_POSTGRES=0, BENCH_DATABASE_URL set, or postgresql-15 missing)');
    }

    const relay = await startListening('relay', (port) => [process.execPath, join(HERE, 'relay.mjs'), String(port), String(vmPort)]);
    log(`ws+net relay pid ${relay.pid} on 127.0.0.1:${relay.port}`);

    const wsf = await startListening('websockify', (port) => ['/usr/bin/websockify', `127.0.0.1:${port}`, `127.0.0.1:${vmPort}`]);
    log(`websockify pid ${wsf.pid} on 127.0.0.1:${wsf.port}`);
    const wsfSession = await api('POST', '/api/v1/sessions', { protocol: 'websockify', target: { host: '127.0.0.1', port: wsf.port, path: '/' } });

    const nginxDir = join(work, 'nginx');
    mkdirSync(join(nginxDir, 'tmp'), { recursive: true });
    const nginx = await startListening('nginx', (port) => {
      writeFileSync(join(nginxDir, 'nginx.conf'), nginxConf(nginxDir, port, wsf.port));
      return ['/usr/sbin/nginx', '-p', nginxDir, '-c', join(nginxDir, 'nginx.conf'), '-e', join(nginxDir, 'error.log'), '-g', 'daemon off;'];
    });
    log(`nginx pid ${nginx.pid} on 127.0.0.1:${nginx.port}`);

    // ----------------------------------------------------------------------- tickets
    // Tickets are minted by the frontend, not the gateway: connect-rate runs draw from a pool minted
    // before the timed window, so the client's signing does not compete for the 2 cores.
    const pools = new Map();
    const ticketFor = async (sessionId) => pools.get(sessionId)?.pop() ?? (await mintTicket({ sessionId, key: SECRET, ttlSeconds: 300 })).ticket;
    const fillPool = async (sessionId, n) => {
      const pool = pools.get(sessionId) ?? [];
      pools.set(sessionId, pool);
      while (pool.length < n) pool.push((await mintTicket({ sessionId, key: SECRET, ttlSeconds: 300 })).ticket);
    };

    // ----------------------------------------------------------------------- paths
    const gwUrl = (t) => `ws://127.0.0.1:${gw.port}/websockify?ticket=${t}`;
    const paths = {
      tcp: { label: 'plain TCP', open: () => openTcp(vmPort), pids: () => [] },
      gateway: { label: 'console-gateway', open: async () => openWs(gwUrl(await ticketFor(vncSession.id))), pids: () => [gw.pid] },
      websockify: { label: 'websockify', open: () => openWs(`ws://127.0.0.1:${wsf.port}/`), pids: () => tree(wsf.pid) },
      gatewayToWsf: { label: 'gateway → websockify', open: async () => openWs(gwUrl(await ticketFor(wsfSession.id))), pids: () => [gw.pid], extraPids: () => tree(wsf.pid) },
      nginxToWsf: { label: 'nginx → websockify', open: () => openWs(`ws://127.0.0.1:${nginx.port}/`), pids: () => childrenOf(nginx.pid), extraPids: () => tree(wsf.pid) },
      relay: { label: 'ws+net relay', open: () => openWs(`ws://127.0.0.1:${relay.port}/`), pids: () => [relay.pid] },
      gatewayPg: { label: 'gateway on PostgreSQL', open: async () => openWs(`ws://127.0.0.1:${gwPg.port}/websockify?ticket=${await ticketFor(pgSession.id)}`), pids: () => [gwPg.pid], extraPids: () => tree(pgAdmin.server.pid) },
      wsfDirect: { label: 'websockify direct', open: () => openWs(`ws://127.0.0.1:${wsf.port}/`), pids: () => tree(wsf.pid), extraPids: () => tree(wsf.pid) },
    };

    // ----------------------------------------------------------------------- client connections
    function wrap(kind) {
      const c = { kind, sock: undefined, ws: undefined, handler: null, closed: false };
      let bannerBuf = Buffer.alloc(0);
      c.banner = new Promise((resolve, reject) => {
        c.handler = (buf) => {
          bannerBuf = Buffer.concat([bannerBuf, buf]);
          if (bannerBuf.length >= 12) {
            c.handler = null;
            resolve(bannerBuf);
          }
        };
        c.failBanner = reject;
      });
      c.banner.catch(() => {});
      c.deliver = (buf) => c.handler?.(buf);
      c.write = (buf, cb) => (kind === 'tcp' ? c.sock.write(buf, cb) : c.ws.send(buf, cb));
      c.destroy = () => {
        c.closed = true;
        if (kind === 'tcp') c.sock.destroy();
        else c.ws.terminate();
      };
      return c;
    }
    function openTcp(port) {
      return new Promise((resolve, reject) => {
        const c = wrap('tcp');
        const s = (c.sock = connectTcp({ host: '127.0.0.1', port }, (b) => c.deliver(b)));
        s.on('error', (e) => { c.failBanner(e); reject(e); });
        s.on('close', () => c.failBanner(new Error('closed')));
        s.once('connect', () => resolve(c));
      });
    }
    function openWs(url) {
      const c = wrap('ws');
      const events = { onData: (b) => c.deliver(b), onClose: (why) => c.failBanner(new Error(why)) };
      return connectWs(url, events).then((conn) => Object.assign(c, { sock: conn.socket, ws: conn }));
    }
    const expectBytes = (c, n) => new Promise((resolve, reject) => {
      let got = 0;
      c.handler = (buf) => {
        got += buf.length;
        if (got >= n) { c.handler = null; resolve(got); }
      };
      c.failBanner = reject;
    });
    // Send `total` bytes in `frame`-sized writes, at most `window` writes queued at once.
    const sendBulk = (c, total, frame) => new Promise((resolve, reject) => {
      const chunk = Buffer.alloc(frame, 0xa5);
      let sent = 0;
      let inflight = 0;
      const window = 8;
      const pump = () => {
        while (sent < total && inflight < window) {
          const n = Math.min(frame, total - sent);
          sent += n;
          inflight++;
          c.write(n === frame ? chunk : chunk.subarray(0, n), (err) => {
            inflight--;
            if (err) return reject(err);
            if (sent >= total && inflight === 0) resolve();
            else pump();
          });
        }
      };
      pump();
    });
    const cmd = (c, s) => new Promise((resolve, reject) => c.write(Buffer.from(s), (e) => (e ? reject(e) : resolve())));

    // ----------------------------------------------------------------------- measurements
    async function measureDown(p, bytes) {
      const c = await p.open();
      await c.banner;
      const cpu0 = cpuOf(p.pids()); const xcpu0 = cpuOf(p.extraPids?.() ?? []); const split0 = cpuSplitOf(p.pids());
      const client0 = process.cpuUsage(); const vm0 = cpuOf([vm.pid]);
      const t0 = performance.now();
      const done = expectBytes(c, bytes);
      await cmd(c, `D ${bytes}\n`);
      await done;
      const secs = (performance.now() - t0) / 1000;
      const cpu = cpuOf(p.pids()) - cpu0; const xcpu = cpuOf(p.extraPids?.() ?? []) - xcpu0; const split1 = cpuSplitOf(p.pids());
      const client = process.cpuUsage(client0); const vmCpu = cpuOf([vm.pid]) - vm0;
      c.destroy();
      const gib = bytes / GiB;
      return { mibps: bytes / MiB / secs, cpuPerGiB: cpu / gib, userPerGiB: (split1.user - split0.user) / gib, sysPerGiB: (split1.sys - split0.sys) / gib, extraCpuPerGiB: xcpu / gib, clientCpuPerGiB: (client.user + client.system) / 1e6 / gib, vmCpuPerGiB: vmCpu / gib, seconds: secs };
    }
    async function measureUp(p, bytes) {
      const c = await p.open();
      await c.banner;
      const cpu0 = cpuOf(p.pids()); const xcpu0 = cpuOf(p.extraPids?.() ?? []); const split0 = cpuSplitOf(p.pids());
      const t0 = performance.now();
      const ack = expectBytes(c, 1);
      await cmd(c, `U ${bytes}\n`);
      await sendBulk(c, bytes, cfg.upFrameBytes);
      await ack;
      const secs = (performance.now() - t0) / 1000;
      const cpu = cpuOf(p.pids()) - cpu0; const xcpu = cpuOf(p.extraPids?.() ?? []) - xcpu0; const split1 = cpuSplitOf(p.pids());
      c.destroy();
      const gib = bytes / GiB;
      return { mibps: bytes / MiB / secs, cpuPerGiB: cpu / gib, userPerGiB: (split1.user - split0.user) / gib, sysPerGiB: (split1.sys - split0.sys) / gib, extraCpuPerGiB: xcpu / gib, seconds: secs };
    }
    async function measureRtt(p, count) {
      const c = await p.open();
      await c.banner;
      await cmd(c, 'E\n');
      const msg = Buffer.alloc(cfg.rttBytes, 0x42);
      const samples = [];
      const warm = Math.min(200, Math.floor(count / 5));
      for (let i = 0; i < count + warm; i++) {
        const t0 = performance.now();
        const back = expectBytes(c, cfg.rttBytes);
        c.write(msg);
        await back;
        if (i >= warm) samples.push((performance.now() - t0) * 1000);
      }
      c.destroy();
      return { p50us: percentile(samples, 50), p99us: percentile(samples, 99) };
    }
    async function measureConnects(p, seconds, concurrency) {
      let ok = 0;
      let failed = 0;
      let firstError;
      const cpu0 = cpuOf(p.pids());
      const xcpu0 = cpuOf(p.extraPids?.() ?? []);
      const t0 = performance.now();
      const deadline = t0 + seconds * 1000;
      const worker = async () => {
        while (performance.now() < deadline) {
          let c;
          try {
            c = await p.open();
            await c.banner;
            ok++;
          } catch (e) {
            failed++;
            firstError ??= e.message;
          } finally {
            c?.destroy();
          }
        }
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
      const secs = (performance.now() - t0) / 1000;
      await sleep(300); // let the proxies finish tearing down before the CPU snapshot
      const cpu = cpuOf(p.pids()) - cpu0;
      const xcpu = cpuOf(p.extraPids?.() ?? []) - xcpu0;
      return { perSecond: ok / secs, failed, firstError, cpuMsPerConnect: ok ? (cpu * 1000) / ok : NaN, extraCpuMsPerConnect: ok ? (xcpu * 1000) / ok : NaN };
    }

    const summarise = (runs) => {
      const out = {};
      for (const k of Object.keys(runs[0])) if (typeof runs[0][k] === 'number') out[k] = median(runs.map((r) => r[k]));
      out.runs = runs;
      return out;
    };

    // Warm-up: JIT, database connection, websockify imports.
    log('warm-up');
    for (const key of Object.keys(paths).filter((k) => k !== 'gatewayPg')) {
      await measureDown(paths[key], 8 * MiB);
      await measureUp(paths[key], 4 * MiB);
      await measureRtt(paths[key], 100);
    }

    const downBytes = cfg.downMiB * MiB;
    const upBytes = cfg.upMiB * MiB;
    const modes = { raw: ['tcp', 'gateway', 'websockify', 'relay'], websockifyTarget: ['wsfDirect', 'gatewayToWsf', 'nginxToWsf'] };
    const none = { mibps: NaN, cpuPerGiB: NaN, userPerGiB: NaN, sysPerGiB: NaN, extraCpuPerGiB: NaN, p50us: NaN, p99us: NaN, perSecond: NaN, cpuMsPerConnect: NaN };
    // Repetitions are interleaved across the paths compared (rep 1 of A, B, C; rep 2 of A, B, C; …)
    // so a burst of unrelated load on the machine hits every path alike and the ratios stay fair.
    const interleaved = async (keys, fn, before) => {
      const runs = Object.fromEntries(keys.map((k) => [k, []]));
      for (let i = 0; i < cfg.reps; i++) {
        for (const key of keys) {
          await before?.(key);
          runs[key].push(await fn(paths[key]));
        }
      }
      return Object.fromEntries(keys.map((k) => [k, summarise(runs[k])]));
    };
    for (const [mode, keys] of Object.entries(modes)) {
      for (const key of keys) results[mode][key] = { label: paths[key].label, down: none, up: none, rtt: none, connects: none };
      if (!cfg.modes.has(mode)) continue;
      const labels = keys.map((k) => paths[k].label).join(' / ');
      const phases = [
        ['down', `downstream ${cfg.downMiB} MiB`, (p) => measureDown(p, downBytes)],
        ['up', `upstream ${cfg.upMiB} MiB`, (p) => measureUp(p, upBytes)],
        ['rtt', `round trips ${cfg.rttCount}`, (p) => measureRtt(p, cfg.rttCount)],
      ];
      for (const [phase, what, fn] of phases) {
        if (!cfg.phases.has(phase)) continue;
        log(`${mode}: ${what} × ${cfg.reps}, interleaved: ${labels}`);
        const out = await interleaved(keys, fn);
        for (const key of keys) results[mode][key][phase] = out[key];
      }
      for (const key of keys) {
        const { down, up, rtt } = results[mode][key];
        log(`  ${paths[key].label}: down ${down.mibps.toFixed(0)} MiB/s ${down.cpuPerGiB.toFixed(2)} s/GiB (user ${down.userPerGiB.toFixed(2)} sys ${down.sysPerGiB.toFixed(2)}; client ${down.clientCpuPerGiB?.toFixed(2)}, VM ${down.vmCpuPerGiB?.toFixed(2)}); up ${up.mibps.toFixed(0)} MiB/s ${up.cpuPerGiB.toFixed(2)} s/GiB (user ${up.userPerGiB.toFixed(2)} sys ${up.sysPerGiB.toFixed(2)}); rtt p50 ${rtt.p50us.toFixed(0)} µs p99 ${rtt.p99us.toFixed(0)} µs`);
      }
    }

    if (cfg.phases.has('connects') && cfg.modes.has('raw')) {
      const keys = ['tcp', 'gateway', ...(gwPg ? ['gatewayPg'] : []), 'websockify', 'relay'];
      results.raw.gatewayPg ??= { label: paths.gatewayPg.label, down: none, up: none, rtt: none, connects: none };
      // A fleet: the connects go to cfg.connectSessions sessions (one VM each in real life), round
      // robin, not all to one session, whose consoles a gateway registers one at a time.
      const fleet = async (port) => {
        const ids = [];
        for (let i = 0; i < cfg.connectSessions; i++) {
          const res = await fetch(`http://127.0.0.1:${port}/api/v1/sessions`, {
            method: 'POST',
            headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' },
            body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port: vmPort } }),
          });
          ids.push((await res.json()).id);
        }
        return { ids, pool: [] };
      };
      const fleets = { gateway: await fleet(gw.port), ...(gwPg ? { gatewayPg: await fleet(gwPg.port) } : {}) };
      const fillFleet = async (f, n) => {
        for (let i = f.pool.length; i < n; i++) f.pool.push((await mintTicket({ sessionId: f.ids[i % f.ids.length], key: SECRET, ttlSeconds: 300 })).ticket);
      };
      const saved = { gateway: paths.gateway.open, gatewayPg: paths.gatewayPg.open };
      paths.gateway.open = () => openWs(gwUrl(fleets.gateway.pool.pop()));
      if (gwPg) paths.gatewayPg.open = () => openWs(`ws://127.0.0.1:${gwPg.port}/websockify?ticket=${fleets.gatewayPg.pool.pop()}`);
      const fill = (key, seconds) => (fleets[key] ? fillFleet(fleets[key], Math.ceil(seconds * (key === 'gateway' ? 2500 : 4000))) : undefined);
      // A gateway runs for days: its connect path is measured once the JIT has compiled it, as are
      // the others'. Without this the first repetitions carry the optimising compiler's work.
      log(`connects/s: warm-up ${cfg.connectWarmSeconds} s each`);
      for (const key of keys) {
        await fill(key, cfg.connectWarmSeconds);
        await measureConnects(paths[key], cfg.connectWarmSeconds, cfg.connectConcurrency);
      }
      log(`connects/s: ${cfg.connectSeconds} s × ${cfg.reps}, ${cfg.connectConcurrency} at a time over ${cfg.connectSessions} sessions, interleaved`);
      const out = await interleaved(
        keys,
        (p) => measureConnects(p, cfg.connectSeconds, cfg.connectConcurrency),
        (key) => fill(key, cfg.connectSeconds),
      );
      Object.assign(paths.gateway, { open: saved.gateway });
      Object.assign(paths.gatewayPg, { open: saved.gatewayPg });
      for (const key of keys) {
        const cr = (results.raw[key].connects = out[key]);
        log(`  ${paths[key].label}: ${cr.perSecond.toFixed(0)}/s (runs ${cr.runs.map((r) => r.perSecond.toFixed(0)).join(', ')}), ${cr.cpuMsPerConnect.toFixed(2)} CPU ms/connect, failed ${cr.runs.reduce((s, r) => s + r.failed, 0)} ${cr.runs.find((r) => r.firstError)?.firstError ?? ''}`);
      }
    }

    if (cfg.phases.has('checksum')) {
      const bytes = cfg.checksumMiB * MiB;
      log(`checksum: ${cfg.checksumMiB} MiB VM → browser through the gateway, SHA-256 of every byte in order`);
      const expected = expectedSha256(bytes);
      const c = await paths.gateway.open();
      await c.banner;
      const hash = createHash('sha256');
      let got = 0;
      const cpu0 = cpuOf([gw.pid]);
      const t0 = performance.now();
      const done = new Promise((resolve, reject) => {
        c.handler = (buf) => {
          hash.update(got + buf.length > bytes ? buf.subarray(0, bytes - got) : buf);
          got += buf.length;
          if (got >= bytes) { c.handler = null; resolve(); }
        };
        c.failBanner = reject;
      });
      await cmd(c, `S ${bytes}\n`);
      await done;
      const secs = (performance.now() - t0) / 1000;
      const cpu = cpuOf([gw.pid]) - cpu0;
      c.destroy();
      const sha = hash.digest('hex');
      results.checksum = { bytes, received: got, ok: sha === expected && got === bytes, mibps: bytes / MiB / secs, cpuPerGiB: cpu / (bytes / GiB) };
      log(`  ${results.checksum.ok ? 'identical' : 'DIFFERENT'}: ${got} bytes, ${results.checksum.mibps.toFixed(0)} MiB/s`);
    }

    if (cfg.phases.has('firstframe')) await measureFirstFrames(gw, api, SECRET);

    if (profileDir) {
      await stopProcess(gw, 15_000);
      if (gwPg) await stopProcess(gwPg, 15_000);
      results.notes.push(`CPU figures inflated by --cpu-prof; profiles of the gateway in ${profileDir}, on PostgreSQL in ${profileDir}/pg (node bench/profile-summary.mjs <file>)`);
    }

    // ----------------------------------------------------------------------- idle memory
    const openIdle = async (p, target, held, concurrency = 64) => {
      let failed = 0;
      let firstError;
      const worker = async () => {
        while (held.length < target) {
          held.push(null); // reserve a slot
          const slot = held.length - 1;
          try {
            const c = await p.open();
            await c.banner;
            held[slot] = c;
          } catch (e) {
            failed++;
            firstError ??= e.message;
            held[slot] = undefined;
          }
        }
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
      return { failed, firstError, open: held.filter(Boolean).length };
    };

    if (cfg.phases.has('idle')) {
    const memoryRuns = [
      { key: 'gateway', label: 'embedded', counts: idleCounts },
      ...(pgAdmin ? [{ key: 'gatewayPg', label: 'PostgreSQL', counts: idleCounts, pg: true }] : []),
    ];
    let idleStart = 0;
    const startIdleGw = async (run) =>
      startGw(`idle-${run.key}-${++idleStart}`, undefined, ['--expose-gc', '--require', join(HERE, 'gc-on-signal.cjs')], run.pg ? await freshPgDatabase() : undefined);
    const settledRssOf = async (pid) => {
      // Full GC (bench/gc-on-signal.cjs), settle, three samples; the median is the reading.
      const samples = [];
      for (let i = 0; i < 3; i++) {
        try { process.kill(pid, 'SIGUSR2'); } catch {}
        await sleep(700);
        samples.push(rssKiB([pid]));
      }
      return median(samples);
    };
    const heapAfterGc = (proc) => {
      try {
        return JSON.parse(readFileSync(proc.memoryFile, 'utf8'));
      } catch {
        return undefined;
      }
    };
    // The idle serve as a new user meets it: started, nothing connected yet, 2 s after it listens.
    // One fresh start differs from the next by tens of MiB (heap and code-space growth steps), so
    // the reading is the median over BENCH_IDLE_STARTS fresh starts per database, interleaved.
    const idleReadings = new Map(memoryRuns.map((run) => [run.key, []]));
    for (let i = 1; i < cfg.idleStarts; i++) {
      for (const run of memoryRuns) {
        const g = await startIdleGw(run);
        await sleep(2000);
        idleReadings.get(run.key).push(await settledRssOf(g.pid));
        await stopProcess(g);
      }
    }
    for (const run of memoryRuns) {
    log(`idle memory: fresh gateway on ${run.label === 'embedded' ? 'a fresh embedded data directory' : 'a fresh PostgreSQL database'}`);
    const gwIdle = await startIdleGw(run);
    const settledRss = () => settledRssOf(gwIdle.pid);
    await sleep(2000);
    idleReadings.get(run.key).push(await settledRss());
    const idleRss = median(idleReadings.get(run.key));
    const idleSession = await (async () => {
      const res = await fetch(`http://127.0.0.1:${gwIdle.port}/api/v1/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' },
        body: JSON.stringify({ protocol: 'vnc', target: { host: '127.0.0.1', port: vmPort } }),
      });
      if (res.status !== 201) throw new Error(`create session → ${res.status}`);
      return res.json();
    })();
    const gwIdlePath = { open: async () => openWs(`ws://127.0.0.1:${gwIdle.port}/websockify?ticket=${await ticketFor(idleSession.id)}`) };
    {
      // Warm-up: connect and close 500 consoles so the JIT, database and buffers are at steady state.
      const warm = [];
      await openIdle(gwIdlePath, 500, warm);
      for (const c of warm) c?.destroy();
      await sleep(1000);
      const base = await settledRss();
      const baseHeap = heapAfterGc(gwIdle);
      const held = [];
      results.idle[run.key] = { idleRssKiB: idleRss, baseRssKiB: base, points: [] };
      results.idle[run.key].idleRssStartsKiB = idleReadings.get(run.key);
      log(`  ${run.label}: idle serve RSS ${(idleRss / 1024).toFixed(0)} MiB (median of ${idleReadings.get(run.key).map((k) => (k / 1024).toFixed(0)).join(', ')}); after 500 connects ${(base / 1024).toFixed(0)} MiB`);
      for (const { requested, measured } of run.counts) {
        const r = await openIdle(gwIdlePath, measured, held);
        await sleep(1000);
        const rss = await settledRss();
        const heap = heapAfterGc(gwIdle);
        const point = { requested, consoles: r.open, rssKiB: rss, kibPerConsole: (rss - base) / r.open, failed: r.failed, firstError: r.firstError };
        // The main thread's JS heap share (after the same full GC): what the gateway's own objects cost.
        if (heap && baseHeap) point.heapKibPerConsole = (heap.heapUsed - baseHeap.heapUsed) / 1024 / r.open;
        results.idle[run.key].points.push(point);
        const ofHeap = point.heapKibPerConsole === undefined ? '' : ` (JS heap ${point.heapKibPerConsole.toFixed(1)})`;
        log(`  ${run.label}: ${r.open} idle consoles: RSS ${(rss / 1024).toFixed(0)} MiB (base ${(base / 1024).toFixed(0)} MiB) → ${point.kibPerConsole.toFixed(1)} KiB/console${ofHeap}${r.failed ? `, ${r.failed} failed (${r.firstError})` : ''}`);
      }
      for (const c of held) c?.destroy();
    }
    await stopProcess(gwIdle);
    }
    }

    if (cfg.phases.has('idlewsf')) {
    log('idle memory: fresh websockify');
    const wsfIdle = await startListening('websockify-idle', (port) => ['/usr/bin/websockify', `127.0.0.1:${port}`, `127.0.0.1:${vmPort}`]);
    {
      await sleep(500);
      const base = { rss: rssKiB(tree(wsfIdle.pid)), pss: pssKiB(tree(wsfIdle.pid)) };
      const held = [];
      // websockify forks one process per connection; open them a few at a time.
      const r = await openIdle({ open: () => openWs(`ws://127.0.0.1:${wsfIdle.port}/`) }, cfg.websockifyIdle, held, 8);
      await sleep(2000);
      const pids = tree(wsfIdle.pid);
      const rss = rssKiB(pids);
      const pss = pssKiB(pids);
      results.idle.websockify = {
        consoles: r.open,
        processes: pids.length,
        baseRssKiB: base.rss,
        basePssKiB: base.pss,
        rssKiB: rss,
        pssKiB: pss,
        kibPerConsoleRss: (rss - base.rss) / r.open,
        kibPerConsolePss: (pss - base.pss) / r.open,
        failed: r.failed,
        firstError: r.firstError,
      };
      log(`  websockify: ${r.open} idle consoles in ${pids.length} processes: PSS ${((pss - base.pss) / r.open).toFixed(0)} KiB/console, summed RSS ${((rss - base.rss) / r.open).toFixed(0)} KiB/console${r.failed ? `; ${r.failed} failed (${r.firstError})` : ''}`);
      for (const c of held) c?.destroy();
    }
    await stopProcess(wsfIdle);
    }

    // ----------------------------------------------------------------------- verdict
    results.finishedAt = new Date().toISOString();
    const table = render(results, cfg);
    process.stdout.write(table);
    mkdirSync(join(HERE, 'results'), { recursive: true });
    const file = join(HERE, 'results', `${ts}${QUICK ? '-quick' : ''}.json`);
    results.table = table;
    writeFileSync(file, JSON.stringify(results, null, 2));
    process.stdout.write(`\nresults: ${file}\n`);
  } finally {
    await stopAll();
    rmSync(work, { recursive: true, force: true });
    pgAdmin?.remove();
  }

  // ------------------------------------------------------------------------- helpers
  function cleanEnv() {
    const out = {};
    for (const k of ['PATH', 'HOME', 'LANG', 'TZ', 'NODE_OPTIONS']) if (env[k] !== undefined) out[k] = env[k];
    return out;
  }
  /**
   * Page load → first VNC frame in a fresh Chromium, against a real Xvnc: the gateway's bundled page
   * (embedded database, ticket consumed) beside the same page served as stock noVNC 1.7 modules by
   * websockify --web, interleaved.
   */
  async function measureFirstFrames(gw, api, SECRET) {
    const { firstFrame } = await import('./first-frame.mjs');
    const display = 100 + Math.floor(Math.random() * 800);
    const xvnc = await lib.startListening('xvnc', (port) => ['/usr/bin/Xtigervnc', `:${display}`, '-rfbport', String(port), '-localhost', '-interface', '127.0.0.1', '-nolisten', 'tcp', '-SecurityTypes', 'None', '-AlwaysShared', '-BlacklistThreshold', '10000', '-geometry', '1024x768', '-depth', '24'], { pidsOf: (p) => lib.tree(p.pid) });
    // The stock layout: the page's own files and noVNC's modules side by side, as websockify serves them.
    const web = join(work, 'web');
    mkdirSync(join(web, 'novnc'), { recursive: true });
    cpSync(join(ROOT, 'static'), join(web, 'static'), { recursive: true });
    cpSync(join(ROOT, 'static', 'console.html'), join(web, 'console.html'));
    for (const dir of ['core', 'vendor']) symlinkSync(join(ROOT, 'node_modules', '@novnc', 'novnc', dir), join(web, 'novnc', dir));
    const stock = await startListening('websockify-web', (port) => ['/usr/bin/websockify', '--web', web, `127.0.0.1:${port}`, `127.0.0.1:${xvnc.port}`]);
    const session = await api('POST', '/api/v1/sessions', { protocol: 'vnc', target: { host: '127.0.0.1', port: xvnc.port } });
    const urls = {
      gateway: async () => `http://127.0.0.1:${gw.port}/console?ticket=${(await mintTicket({ sessionId: session.id, key: SECRET, ttlSeconds: 120 })).ticket}`,
      stock: async () => `http://127.0.0.1:${stock.port}/console.html?ticket=a.b.c`,
    };
    log(`first frame in Chromium: ${cfg.firstFrameReps} × (gateway bundle, stock noVNC modules via websockify), a fresh browser each`);
    const runs = { gateway: [], stock: [] };
    try {
      await firstFrame(await urls.stock()); // warm the OS page cache for Chromium itself
      for (let i = 0; i < cfg.firstFrameReps; i++) {
        for (const key of ['gateway', 'stock']) runs[key].push(await firstFrame(await urls[key]()));
      }
    } finally {
      await stopProcess(stock);
      await stopProcess(xvnc);
    }
    results.firstFrame = Object.fromEntries(
      Object.entries(runs).map(([k, r]) => [k, { ms: median(r.map((x) => x.ms)), requests: median(r.map((x) => x.requests)), runs: r }]),
    );
    log(`  gateway ${results.firstFrame.gateway.ms.toFixed(0)} ms (${results.firstFrame.gateway.requests} requests), stock ${results.firstFrame.stock.ms.toFixed(0)} ms (${results.firstFrame.stock.requests} requests); runs ${runs.gateway.map((x) => x.ms.toFixed(0)).join('/')} vs ${runs.stock.map((x) => x.ms.toFixed(0)).join('/')}`);
  }

  function nginxConf(dir, port, upstreamPort) {
    return `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://127.0.0.1:${upstreamPort};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
`;
  }
}

/** The capacity model: what one core, one replica and one PostgreSQL carry, from this run's figures. */
function capacity(r) {
  const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const g = r.raw.gateway, gp = r.raw.gatewayPg;
  const gibPerCore = 1 / g.down.cpuPerGiB;
  const idle = (r.idle.gateway?.points ?? []).at(-1);
  const kib = idle?.kibPerConsole ?? NaN;
  const out = ['Capacity model (per core of this machine; see README "Performance")'];
  out.push(`  VM → browser: ${f(gibPerCore, 2)} GiB/s per core (1 / ${f(g.down.cpuPerGiB, 2)} CPU s/GiB); browser → VM ${f(1 / g.up.cpuPerGiB, 2)} GiB/s per core`);
  out.push(`  active consoles per core at 1 MiB/s each (a busy desktop): ${f((gibPerCore * 1024) / 1)}; at 100 KiB/s (typing, a terminal): ${f((gibPerCore * 1024 * 1024) / 100)}`);
  out.push(`  memory: ${f(kib, 1)} KiB per idle console (@${idle?.consoles ?? '?'}), so ${f((1024 * 1024) / kib)} idle consoles per GiB above the idle process (${f((r.idle.gateway?.idleRssKiB ?? NaN) / 1024)} MiB embedded, ${f((r.idle.gatewayPg?.idleRssKiB ?? NaN) / 1024)} MiB on PostgreSQL); a streaming console adds one 1 MiB read buffer (two while a write holds one), and a slow browser holds up to 256 KiB + one read queued`);
  out.push(`  connects: ${f(1000 / g.connects.cpuMsPerConnect)}/s per gateway core embedded (${f(g.connects.cpuMsPerConnect, 2)} ms each; one replica, one process)` + (gp && Number.isFinite(gp.connects.cpuMsPerConnect) ? `, ${f(1000 / gp.connects.cpuMsPerConnect)}/s per gateway core on PostgreSQL (${f(gp.connects.cpuMsPerConnect, 2)} ms)` : ''));
  if (gp && Number.isFinite(gp.connects.extraCpuMsPerConnect)) out.push(`  PostgreSQL: ${f(gp.connects.extraCpuMsPerConnect, 3)} CPU ms per connect (one group-committed statement per batch), so ~${f(1000 / gp.connects.extraCpuMsPerConnect)} connects/s per PostgreSQL core before it is the limit`);
  return out;
}

function hostInfo() {
  return { node: process.version, platform: process.platform, arch: process.arch };
}

function render(r, cfg) {
  const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const ratio = (a, b) => a / b;
  const verdict = (ok, x) => (Number.isNaN(x) ? '' : ok ? 'PASS' : 'MISS');
  const lines = [];
  const row = (cells, widths) => cells.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd();
  const W = [36, 10, 16, 11, 12, 34];
  const raw = r.raw;
  lines.push('');
  lines.push(`console-gateway benchmark — medians of ${cfg.reps} runs (${cfg.quick ? 'QUICK' : 'full'}: down ${cfg.downMiB} MiB, up ${cfg.upMiB} MiB in ${cfg.upFrameBytes / 1024} KiB frames, ${cfg.rttCount} × ${cfg.rttBytes}-byte round trips, connects ${cfg.connectSeconds} s × ${cfg.connectConcurrency} in flight)`);
  lines.push('');
  lines.push('1. Raw-TCP mode: client → proxy → TCP "VM" (gateway on the embedded database unless marked)');
  lines.push(row(['metric', 'plain TCP', 'console-gateway', 'websockify', 'ws+net relay', 'ratio  aim'], W));
  lines.push(row(W.map((w) => '-'.repeat(w)), W));
  const t = raw.tcp, g = raw.gateway, w = raw.websockify, rl = raw.relay;
  const dm = ratio(g.down.mibps, w.down.mibps);
  lines.push(row(['downstream MiB/s', f(t.down.mibps), f(g.down.mibps), f(w.down.mibps), f(rl.down.mibps), `${f(dm, 2)}× wsf  ≥1.30× ${verdict(dm >= 1.3, dm)}`], W));
  lines.push(row(['upstream MiB/s', f(t.up.mibps), f(g.up.mibps), f(w.up.mibps), f(rl.up.mibps), `${f(ratio(g.up.mibps, w.up.mibps), 2)}× wsf`], W));
  const cd = ratio(g.down.cpuPerGiB, w.down.cpuPerGiB);
  const cdr = ratio(g.down.cpuPerGiB, rl.down.cpuPerGiB);
  const cu = ratio(g.up.cpuPerGiB, w.up.cpuPerGiB);
  lines.push(row(['proxy CPU s/GiB downstream', '-', f(g.down.cpuPerGiB, 2), f(w.down.cpuPerGiB, 2), f(rl.down.cpuPerGiB, 2), `${f(cd, 2)}× wsf  ≤0.70× ${verdict(cd <= 0.7, cd)}`], W));
  lines.push(row(['', '', '', '', '', `${f(cdr, 2)}× relay  ≤0.80× ${verdict(cdr <= 0.8, cdr)}`], W));
  lines.push(row(['proxy CPU s/GiB upstream', '-', f(g.up.cpuPerGiB, 2), f(w.up.cpuPerGiB, 2), f(rl.up.cpuPerGiB, 2), `${f(cu, 2)}× wsf  ≤0.30× ${verdict(cu <= 0.3, cu)}`], W));
  lines.push(row(['  of which user / sys, down', '-', `${f(g.down.userPerGiB, 2)} / ${f(g.down.sysPerGiB, 2)}`, `${f(w.down.userPerGiB, 2)} / ${f(w.down.sysPerGiB, 2)}`, `${f(rl.down.userPerGiB, 2)} / ${f(rl.down.sysPerGiB, 2)}`, ''], W));
  lines.push(row(['  of which user / sys, up', '-', `${f(g.up.userPerGiB, 2)} / ${f(g.up.sysPerGiB, 2)}`, `${f(w.up.userPerGiB, 2)} / ${f(w.up.sysPerGiB, 2)}`, `${f(rl.up.userPerGiB, 2)} / ${f(rl.up.sysPerGiB, 2)}`, ''], W));
  lines.push(row(['client + VM CPU s/GiB down (info)', `${f(t.down.clientCpuPerGiB, 2)} + ${f(t.down.vmCpuPerGiB, 2)}`, `${f(g.down.clientCpuPerGiB, 2)} + ${f(g.down.vmCpuPerGiB, 2)}`, `${f(w.down.clientCpuPerGiB, 2)} + ${f(w.down.vmCpuPerGiB, 2)}`, `${f(rl.down.clientCpuPerGiB, 2)} + ${f(rl.down.vmCpuPerGiB, 2)}`, ''], W));
  const rp = ratio(g.rtt.p50us, w.rtt.p50us);
  lines.push(row([`${cfg.rttBytes}-byte RTT p50 µs`, f(t.rtt.p50us), f(g.rtt.p50us), f(w.rtt.p50us), f(rl.rtt.p50us), `${f(rp, 2)}× wsf  ≤1.00× ${verdict(rp <= 1, rp)}`], W));
  lines.push(row([`${cfg.rttBytes}-byte RTT p99 µs`, f(t.rtt.p99us), f(g.rtt.p99us), f(w.rtt.p99us), f(rl.rtt.p99us), `${f(ratio(g.rtt.p99us, w.rtt.p99us), 2)}× wsf`], W));
  if (r.checksum) {
    lines.push(row([`${f(r.checksum.bytes / 2 ** 20)} MiB checksum VM → browser`, '', r.checksum.ok ? 'identical' : 'DIFFERENT', '', '', `${f(r.checksum.mibps)} MiB/s  ${r.checksum.ok ? 'PASS' : 'MISS'}`], W));
  }
  const cr = ratio(g.connects.perSecond, w.connects.perSecond);
  lines.push(row(['connects/s, embedded (ticket+DB)', f(t.connects.perSecond), f(g.connects.perSecond), f(w.connects.perSecond), f(rl.connects.perSecond), `${f(cr, 2)}× wsf ≥4.00× ${verdict(cr >= 4, cr)}; ≥600 ${verdict(g.connects.perSecond >= 600, g.connects.perSecond)}`], W));
  const gp = raw.gatewayPg;
  if (gp && Number.isFinite(gp.connects.perSecond)) {
    const crp = ratio(gp.connects.perSecond, w.connects.perSecond);
    lines.push(row(['connects/s, on PostgreSQL', '', f(gp.connects.perSecond), '', '', `${f(crp, 2)}× wsf ≥4.00× ${verdict(crp >= 4, crp)}; ≥1000 ${verdict(gp.connects.perSecond >= 1000, gp.connects.perSecond)}`], W));
  }
  lines.push(row(['proxy CPU ms per connect, embedded', '-', f(g.connects.cpuMsPerConnect, 2), f(w.connects.cpuMsPerConnect, 2), f(rl.connects.cpuMsPerConnect, 2), `≤3 ms ${verdict(g.connects.cpuMsPerConnect <= 3, g.connects.cpuMsPerConnect)}`], W));
  if (gp && Number.isFinite(gp.connects.perSecond)) {
    lines.push(row(['proxy CPU ms per connect, PostgreSQL', '-', f(gp.connects.cpuMsPerConnect, 2), '', '', `≤3 ms ${verdict(gp.connects.cpuMsPerConnect <= 3, gp.connects.cpuMsPerConnect)}; PostgreSQL ${f(gp.connects.extraCpuMsPerConnect, 2)} ms`], W));
  }
  for (const [key, label] of [['gateway', 'embedded'], ['gatewayPg', 'PostgreSQL']]) {
    for (const p of r.idle[key]?.points ?? []) {
      const note = p.consoles !== p.requested ? ` (fd cap)` : '';
      const heap = p.heapKibPerConsole === undefined ? '' : ` (JS heap ${f(p.heapKibPerConsole, 1)})`;
      lines.push(row([`KiB per idle console @${p.consoles}, ${label}${note}`, '-', f(p.kibPerConsole, 1), '', '', `≤16 KiB ${verdict(p.kibPerConsole <= 16, p.kibPerConsole)}${heap}`], W));
    }
  }
  const wi = r.idle.websockify;
  if (wi) lines.push(row([`websockify KiB/idle console @${wi.consoles}`, '-', '', `${f(wi.kibPerConsolePss)} PSS`, '', `(${f(wi.kibPerConsoleRss)} KiB summed RSS, ${wi.processes} processes)`], W));
  const ie = r.idle.gateway, ip = r.idle.gatewayPg;
  if (ie && ip) {
    const mr = ratio(ie.idleRssKiB, ip.idleRssKiB);
    const at = (x) => x.points[0] ? `, ${f(x.points[0].rssKiB / 1024)} MiB with ${x.points[0].consoles} idle consoles` : '';
    lines.push(row(['idle serve RSS MiB, embedded / PG', '', `${f(ie.idleRssKiB / 1024)} / ${f(ip.idleRssKiB / 1024)}`, '', '', `${f(mr, 2)}×  ≤2.60× ${verdict(mr <= 2.6, mr)}`], W));
    lines.push(`    embedded${at(ie)}; PostgreSQL${at(ip)}`);
  }
  const ff = r.firstFrame;
  if (ff) {
    const fr = ratio(ff.gateway.ms, ff.stock.ms);
    lines.push(row(['first frame ms in Chromium (page load)', '', `${f(ff.gateway.ms)} (${f(ff.gateway.requests)} req)`, `${f(ff.stock.ms)} stock`, `(${f(ff.stock.requests)} req)`, `${f(fr, 2)}× stock  ≤0.50× ${verdict(fr <= 0.5, fr)}`], W));
  }
  lines.push('');
  lines.push(...capacity(r));
  lines.push('');
  lines.push('2. websockify-target mode: client → proxy → Debian websockify → TCP "VM"');
  const W2 = [34, 16, 16, 16, 24];
  const x = r.websockifyTarget;
  const d = x.wsfDirect, gg = x.gatewayToWsf, n = x.nginxToWsf;
  lines.push(row(['metric', 'websockify direct', 'gateway → wsf', 'nginx → wsf', 'gateway/nginx  aim'], W2));
  lines.push(row(['-'.repeat(34), '-'.repeat(16), '-'.repeat(16), '-'.repeat(16), '-'.repeat(24)], W2));
  lines.push(row(['downstream MiB/s', f(d.down.mibps), f(gg.down.mibps), f(n.down.mibps), `${f(ratio(gg.down.mibps, n.down.mibps), 2)}×`], W2));
  lines.push(row(['upstream MiB/s', f(d.up.mibps), f(gg.up.mibps), f(n.up.mibps), `${f(ratio(gg.up.mibps, n.up.mibps), 2)}×`], W2));
  const nd = ratio(gg.down.cpuPerGiB, n.down.cpuPerGiB);
  const nu = ratio(gg.up.cpuPerGiB, n.up.cpuPerGiB);
  lines.push(row(['proxy CPU s/GiB downstream', '(0: no proxy)', f(gg.down.cpuPerGiB, 3), f(n.down.cpuPerGiB, 3), `${f(nd, 2)}×  ≤1.30× ${verdict(nd <= 1.3, nd)}`], W2));
  lines.push(row(['proxy CPU s/GiB upstream', '(0: no proxy)', f(gg.up.cpuPerGiB, 3), f(n.up.cpuPerGiB, 3), `${f(nu, 2)}×  ≤1.30× ${verdict(nu <= 1.3, nu)}`], W2));
  lines.push(row(['  of which user / sys, down', '', `${f(gg.down.userPerGiB, 2)} / ${f(gg.down.sysPerGiB, 2)}`, `${f(n.down.userPerGiB, 2)} / ${f(n.down.sysPerGiB, 2)}`, ''], W2));
  lines.push(row(['  of which user / sys, up', '', `${f(gg.up.userPerGiB, 2)} / ${f(gg.up.sysPerGiB, 2)}`, `${f(n.up.userPerGiB, 2)} / ${f(n.up.sysPerGiB, 2)}`, ''], W2));
  lines.push(row(['websockify CPU s/GiB down (info)', f(d.down.extraCpuPerGiB, 2), f(gg.down.extraCpuPerGiB, 2), f(n.down.extraCpuPerGiB, 2), ''], W2));
  lines.push(row(['websockify CPU s/GiB up (info)', f(d.up.extraCpuPerGiB, 2), f(gg.up.extraCpuPerGiB, 2), f(n.up.extraCpuPerGiB, 2), ''], W2));
  lines.push(row([`${cfg.rttBytes}-byte RTT p50 µs`, f(d.rtt.p50us), f(gg.rtt.p50us), f(n.rtt.p50us), `${f(ratio(gg.rtt.p50us, n.rtt.p50us), 2)}×`], W2));
  lines.push(row([`${cfg.rttBytes}-byte RTT p99 µs`, f(d.rtt.p99us), f(gg.rtt.p99us), f(n.rtt.p99us), `${f(ratio(gg.rtt.p99us, n.rtt.p99us), 2)}×`], W2));
  lines.push('');
  for (const note of r.notes) lines.push(`note: ${note}`);
  lines.push('CPU = utime+stime of the proxy only (gateway process; websockify process tree; nginx worker), from /proc, 10 ms ticks.');
  return lines.join('\n') + '\n';
}
