#!/usr/bin/env node
// console-gateway benchmark: the gateway beside Debian websockify, nginx and plain TCP, in one run.
// Usage: npm run build && node bench/run.mjs        (BENCH_QUICK=1 for a ~1-minute smoke run)
// See bench/README.md for what each number means and the aims.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
  const { WebSocket } = await import('ws');
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  const { mintTicket } = await import('../dist/console/ticket.js');
  const { startProcess, startListening, stopProcess, stopAll, tree, cpuOf, cpuSplitOf, rssKiB, pssKiB, sleep, median, percentile, childrenOf } = lib;

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
    connectConcurrency: num('BENCH_CONNECT_CONCURRENCY', 16, 16),
    idleCounts: (env.BENCH_IDLE_COUNTS ?? (QUICK ? '200,1000' : '1000,10000')).split(',').map(Number),
    websockifyIdle: num('BENCH_WEBSOCKIFY_IDLE', 500, 100), // Debian websockify 0.10 refuses (1006) beyond ~508 concurrent consoles per instance
    cpuProfile: env.BENCH_CPU_PROFILE === '1',
    phases: new Set((env.BENCH_PHASES ?? 'down,up,rtt,connects,idle,idlewsf').split(',')),
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

  try {
    // ----------------------------------------------------------------------- peers
    const vm = startProcess('vm', [process.execPath, join(HERE, 'vm-server.mjs')]);
    const vmPort = await waitJsonPort(vm);
    log(`VM server pid ${vm.pid} on 127.0.0.1:${vmPort}`);

    const SECRET = randomBytes(32).toString('hex');
    const CONTROL = randomBytes(16).toString('hex');
    const gwEnv = (dataDir) => ({
      ...cleanEnv(),
      HOST: '127.0.0.1',
      TICKET_SECRET: SECRET,
      CONTROL_TOKEN: CONTROL,
      ...(cfg.databaseUrl ? { DATABASE_URL: cfg.databaseUrl } : { DATA_DIR: dataDir }),
      TARGET_ALLOWED_CIDRS: '127.0.0.1/32',
      NOVNC_READY_GATING_ENABLED: 'false',
      LOG_LEVEL: env.BENCH_GATEWAY_LOG_LEVEL ?? 'warn',
      MAX_CONSOLES: '20000',
    });
    // startListening passes the port to makeArgv; the gateway takes it from PORT, so wrap env per attempt.
    const startGw = async (label, profileDir, extraNodeArgs = []) => {
      const dataDir = join(work, `db-${label}`);
      mkdirSync(dataDir, { recursive: true });
      const nodeArgs = [...extraNodeArgs, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [])];
      return startListening(`gateway-${label}`, (port) => ['env', `PORT=${port}`, process.execPath, ...nodeArgs, join(ROOT, 'dist/cli.js'), 'serve'], {
        env: gwEnv(dataDir),
        pidsOf: (p) => [p.pid],
      });
    };

    const profileDir = cfg.cpuProfile ? join(HERE, 'results', `profile-${ts}`) : undefined;
    const gw = await startGw('main', profileDir);
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
      wsfDirect: { label: 'websockify direct', open: () => openWs(`ws://127.0.0.1:${wsf.port}/`), pids: () => tree(wsf.pid), extraPids: () => tree(wsf.pid) },
    };

    // ----------------------------------------------------------------------- client connections
    function wrap(kind, sock, ws) {
      const c = { kind, sock, ws, handler: null, closed: false };
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
      c.write = (buf, cb) => (kind === 'tcp' ? sock.write(buf, cb) : ws.send(buf, { binary: true }, cb));
      c.destroy = () => {
        c.closed = true;
        if (kind === 'tcp') sock.destroy();
        else ws.terminate();
      };
      return c;
    }
    function openTcp(port) {
      return new Promise((resolve, reject) => {
        const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
        const c = wrap('tcp', s);
        s.on('data', (b) => c.deliver(b));
        s.on('error', (e) => { c.failBanner(e); reject(e); });
        s.on('close', () => c.failBanner(new Error('closed')));
        s.once('connect', () => resolve(c));
      });
    }
    function zeroMask(mask) {
      mask.fill(0);
    }
    function openWs(url) {
      return new Promise((resolve, reject) => {
        // An all-zero masking key makes ws skip masking on the client side (the client's CPU is not
        // what we measure); the proxy still unmasks every byte exactly as for a browser's random key.
        const ws = new WebSocket(url, ['binary'], { perMessageDeflate: false, maxPayload: 0, generateMask: zeroMask });
        const c = wrap('ws', null, ws);
        ws.on('message', (b) => c.deliver(b));
        ws.on('error', (e) => { c.failBanner(e); reject(e); });
        ws.on('close', (code, reason) => c.failBanner(new Error(`closed ${code} ${reason}`)));
        ws.once('open', () => { c.sock = ws._socket; c.sock.setNoDelay(true); resolve(c); });
      });
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
      const t0 = performance.now();
      const done = expectBytes(c, bytes);
      await cmd(c, `D ${bytes}\n`);
      await done;
      const secs = (performance.now() - t0) / 1000;
      const cpu = cpuOf(p.pids()) - cpu0; const xcpu = cpuOf(p.extraPids?.() ?? []) - xcpu0; const split1 = cpuSplitOf(p.pids());
      c.destroy();
      const gib = bytes / GiB;
      return { mibps: bytes / MiB / secs, cpuPerGiB: cpu / gib, userPerGiB: (split1.user - split0.user) / gib, sysPerGiB: (split1.sys - split0.sys) / gib, extraCpuPerGiB: xcpu / gib, seconds: secs };
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
      return { perSecond: ok / secs, failed, firstError, cpuMsPerConnect: ok ? (cpu * 1000) / ok : NaN };
    }

    const summarise = (runs) => {
      const out = {};
      for (const k of Object.keys(runs[0])) if (typeof runs[0][k] === 'number') out[k] = median(runs.map((r) => r[k]));
      out.runs = runs;
      return out;
    };

    // Warm-up: JIT, database connection, websockify imports.
    log('warm-up');
    for (const key of Object.keys(paths)) {
      await measureDown(paths[key], 8 * MiB);
      await measureUp(paths[key], 4 * MiB);
      await measureRtt(paths[key], 100);
    }

    const downBytes = cfg.downMiB * MiB;
    const upBytes = cfg.upMiB * MiB;
    const modes = { raw: ['tcp', 'gateway', 'websockify'], websockifyTarget: ['wsfDirect', 'gatewayToWsf', 'nginxToWsf'] };
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
        log(`  ${paths[key].label}: down ${down.mibps.toFixed(0)} MiB/s ${down.cpuPerGiB.toFixed(2)} s/GiB (user ${down.userPerGiB.toFixed(2)} sys ${down.sysPerGiB.toFixed(2)}); up ${up.mibps.toFixed(0)} MiB/s ${up.cpuPerGiB.toFixed(2)} s/GiB (user ${up.userPerGiB.toFixed(2)} sys ${up.sysPerGiB.toFixed(2)}); rtt p50 ${rtt.p50us.toFixed(0)} µs p99 ${rtt.p99us.toFixed(0)} µs`);
      }
    }

    if (cfg.phases.has('connects') && cfg.modes.has('raw')) {
      const keys = ['tcp', 'gateway', 'websockify'];
      log(`connects/s: ${cfg.connectSeconds} s × ${cfg.reps}, ${cfg.connectConcurrency} at a time, interleaved`);
      const out = await interleaved(
        keys,
        (p) => measureConnects(p, cfg.connectSeconds, cfg.connectConcurrency),
        (key) => (key === 'gateway' ? fillPool(vncSession.id, Math.ceil(cfg.connectSeconds * 2000)) : undefined),
      );
      for (const key of keys) {
        const cr = (results.raw[key].connects = out[key]);
        log(`  ${paths[key].label}: ${cr.perSecond.toFixed(0)}/s (runs ${cr.runs.map((r) => r.perSecond.toFixed(0)).join(', ')}), ${cr.cpuMsPerConnect.toFixed(2)} CPU ms/connect, failed ${cr.runs.reduce((s, r) => s + r.failed, 0)} ${cr.runs.find((r) => r.firstError)?.firstError ?? ''}`);
      }
    }

    if (profileDir) {
      await stopProcess(gw, 15_000);
      results.notes.push(`CPU figures inflated by --cpu-prof; profile of the main gateway in ${profileDir} (node bench/profile-summary.mjs <file>)`);
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
    log('idle memory: fresh gateway');
    const gwIdle = await startGw('idle', undefined, ['--expose-gc', '--require', join(HERE, 'gc-on-signal.cjs')]);
    const settledRss = async () => {
      // Full GC (bench/gc-on-signal.cjs), settle, three samples; the median is the reading.
      const samples = [];
      for (let i = 0; i < 3; i++) {
        try { process.kill(gwIdle.pid, 'SIGUSR2'); } catch {}
        await sleep(700);
        samples.push(rssKiB([gwIdle.pid]));
      }
      return median(samples);
    };
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
      const held = [];
      results.idle.gateway = { baseRssKiB: base, points: [] };
      for (const { requested, measured } of idleCounts) {
        const r = await openIdle(gwIdlePath, measured, held);
        await sleep(1000);
        const rss = await settledRss();
        const point = { requested, consoles: r.open, rssKiB: rss, kibPerConsole: (rss - base) / r.open, failed: r.failed, firstError: r.firstError };
        results.idle.gateway.points.push(point);
        log(`  gateway: ${r.open} idle consoles: RSS ${(rss / 1024).toFixed(0)} MiB (base ${(base / 1024).toFixed(0)} MiB) → ${point.kibPerConsole.toFixed(1)} KiB/console${r.failed ? `, ${r.failed} failed (${r.firstError})` : ''}`);
      }
      for (const c of held) c?.destroy();
    }
    await stopProcess(gwIdle);
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
  }

  // ------------------------------------------------------------------------- helpers
  function cleanEnv() {
    const out = {};
    for (const k of ['PATH', 'HOME', 'LANG', 'TZ', 'NODE_OPTIONS']) if (env[k] !== undefined) out[k] = env[k];
    return out;
  }
  async function waitJsonPort(proc) {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const line = proc.stdout.split('\n').find((l) => l.startsWith('{'));
      if (line) return JSON.parse(line).port;
      if (proc.exited) break;
      await sleep(20);
    }
    throw new Error(`${proc.name} did not report its port: ${proc.stderr}`);
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

function hostInfo() {
  return { node: process.version, platform: process.platform, arch: process.arch };
}

function render(r, cfg) {
  const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const ratio = (a, b) => a / b;
  const verdict = (ok, x) => (Number.isNaN(x) ? '' : ok ? 'PASS' : 'MISS');
  const lines = [];
  const row = (cells, widths) => cells.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd();
  const W = [34, 12, 16, 12, 24];
  const raw = r.raw;
  lines.push('');
  lines.push(`console-gateway benchmark — medians of ${cfg.reps} runs (${cfg.quick ? 'QUICK' : 'full'}: down ${cfg.downMiB} MiB, up ${cfg.upMiB} MiB in ${cfg.upFrameBytes / 1024} KiB frames, ${cfg.rttCount} × ${cfg.rttBytes}-byte round trips, connects ${cfg.connectSeconds} s × ${cfg.connectConcurrency} concurrent)`);
  lines.push('');
  lines.push('1. Raw-TCP mode: client → proxy → TCP "VM"');
  lines.push(row(['metric', 'plain TCP', 'console-gateway', 'websockify', 'gateway/websockify  aim'], W));
  lines.push(row(['-'.repeat(34), '-'.repeat(12), '-'.repeat(16), '-'.repeat(12), '-'.repeat(24)], W));
  const t = raw.tcp, g = raw.gateway, w = raw.websockify;
  lines.push(row(['downstream MiB/s', f(t.down.mibps), f(g.down.mibps), f(w.down.mibps), `${f(ratio(g.down.mibps, w.down.mibps), 2)}×`], W));
  lines.push(row(['upstream MiB/s', f(t.up.mibps), f(g.up.mibps), f(w.up.mibps), `${f(ratio(g.up.mibps, w.up.mibps), 2)}×`], W));
  const cd = ratio(g.down.cpuPerGiB, w.down.cpuPerGiB);
  const cu = ratio(g.up.cpuPerGiB, w.up.cpuPerGiB);
  lines.push(row(['proxy CPU s/GiB downstream', '-', f(g.down.cpuPerGiB, 2), f(w.down.cpuPerGiB, 2), `${f(cd, 2)}×  ≤0.70× ${verdict(cd <= 0.7, cd)}`], W));
  lines.push(row(['proxy CPU s/GiB upstream', '-', f(g.up.cpuPerGiB, 2), f(w.up.cpuPerGiB, 2), `${f(cu, 2)}×  ≤0.30× ${verdict(cu <= 0.3, cu)}`], W));
  const rp = ratio(g.rtt.p50us, w.rtt.p50us);
  lines.push(row(['  of which user / sys, down', '-', `${f(g.down.userPerGiB, 2)} / ${f(g.down.sysPerGiB, 2)}`, `${f(w.down.userPerGiB, 2)} / ${f(w.down.sysPerGiB, 2)}`, ''], W));
  lines.push(row(['  of which user / sys, up', '-', `${f(g.up.userPerGiB, 2)} / ${f(g.up.sysPerGiB, 2)}`, `${f(w.up.userPerGiB, 2)} / ${f(w.up.sysPerGiB, 2)}`, ''], W));
  lines.push(row([`${cfg.rttBytes}-byte RTT p50 µs`, f(t.rtt.p50us), f(g.rtt.p50us), f(w.rtt.p50us), `${f(rp, 2)}×  ≤1.00× ${verdict(rp <= 1, rp)}`], W));
  lines.push(row([`${cfg.rttBytes}-byte RTT p99 µs`, f(t.rtt.p99us), f(g.rtt.p99us), f(w.rtt.p99us), `${f(ratio(g.rtt.p99us, w.rtt.p99us), 2)}×`], W));
  const cr = ratio(g.connects.perSecond, w.connects.perSecond);
  lines.push(row(['connects/s (gateway: ticket+DB)', f(t.connects.perSecond), f(g.connects.perSecond), f(w.connects.perSecond), `${f(cr, 2)}×  ≥2.00× ${verdict(cr >= 2, cr)}`], W));
  lines.push(row(['proxy CPU ms per connect', '-', f(g.connects.cpuMsPerConnect, 2), f(w.connects.cpuMsPerConnect, 2), `${f(ratio(g.connects.cpuMsPerConnect, w.connects.cpuMsPerConnect), 2)}×`], W));
  for (const p of r.idle.gateway?.points ?? []) {
    const note = p.consoles !== p.requested ? ` (asked ${p.requested}; fd limit)` : '';
    lines.push(row([`KiB per idle console @${p.consoles}${note}`, '-', f(p.kibPerConsole, 1), '', `≤16 KiB ${verdict(p.kibPerConsole <= 16, p.kibPerConsole)}`], [W[0] + (note ? 0 : 0), W[1], W[2], W[3], W[4]]));
  }
  const wi = r.idle.websockify;
  if (wi) {
    lines.push(row([`websockify KiB/idle console @${wi.consoles}`, '-', '', `${f(wi.kibPerConsolePss)} PSS`, `(${f(wi.kibPerConsoleRss)} KiB summed RSS, ${wi.processes} processes)`], W));
    const g1 = r.idle.gateway?.points.find((p) => p.consoles <= wi.consoles * 1.5) ?? r.idle.gateway?.points[0];
    if (g1) lines.push(row(['  websockify PSS / gateway RSS per console', '', '', '', `${f(wi.kibPerConsolePss / g1.kibPerConsole, 0)}× (gateway @${g1.consoles})`], W));
  }
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
