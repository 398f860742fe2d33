// Helpers for bench/run.mjs: child processes (always killed on exit), /proc accounting, statistics.
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

// ---------------------------------------------------------------------------------------------
// Child processes. Each is started in its own process group (detached) through bash, so its
// `ulimit -n` can be raised to the hard limit; cleanup kills exactly those groups.
const children = new Set();

export function startProcess(name, argv, { env = process.env, cwd } = {}) {
  const child = spawn('bash', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'bash', ...argv], {
    env,
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const proc = { name, child, pid: child.pid, stdout: '', stderr: '', exited: false, exitCode: undefined };
  const keep = (key) => (chunk) => {
    proc[key] += chunk.toString();
    if (proc[key].length > 64 * 1024) proc[key] = proc[key].slice(-32 * 1024);
  };
  child.stdout.on('data', keep('stdout'));
  child.stderr.on('data', keep('stderr'));
  proc.exit = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      proc.exited = true;
      proc.exitCode = code ?? signal;
      children.delete(proc);
      resolve(proc.exitCode);
    }),
  );
  children.add(proc);
  return proc;
}

/** SIGTERM to the process group, SIGKILL after `graceMs`. */
export async function stopProcess(proc, graceMs = 3000) {
  if (proc.exited) return;
  try { process.kill(-proc.pid, 'SIGTERM'); } catch {}
  const timer = setTimeout(() => { try { process.kill(-proc.pid, 'SIGKILL'); } catch {} }, graceMs);
  await proc.exit;
  clearTimeout(timer);
  // Forked grandchildren (websockify's per-connection processes) share the group.
  try { process.kill(-proc.pid, 'SIGKILL'); } catch {}
}

export async function stopAll() {
  await Promise.all([...children].map((p) => stopProcess(p)));
}

function killAllNow() {
  for (const p of children) { try { process.kill(-p.pid, 'SIGKILL'); } catch {} }
}
process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { killAllNow(); process.exit(130); });
}

// ---------------------------------------------------------------------------------------------
// /proc accounting.
export const CLK_TCK = 100; // getconf CLK_TCK on Linux/x86-64

function statFields(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return s.slice(s.lastIndexOf(')') + 2).split(' '); // [0] = field 3 (state)
}

/** utime+stime+cutime+cstime in seconds (reaped children's time lands in cutime/cstime). */
export function cpuSeconds(pid) {
  try {
    const f = statFields(pid);
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** { user, sys } seconds, children's reaped time included. */
export function cpuSplitOf(pids) {
  let user = 0;
  let sys = 0;
  for (const pid of pids) {
    try {
      const f = statFields(pid);
      user += (Number(f[11]) + Number(f[13])) / CLK_TCK;
      sys += (Number(f[12]) + Number(f[14])) / CLK_TCK;
    } catch {}
  }
  return { user, sys };
}

export function childrenOf(pid) {
  const out = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'latin1').trim();
        if (text) out.push(...text.split(' ').map(Number));
      } catch {}
    }
  } catch {}
  return out;
}

export function tree(pid) {
  const all = [pid];
  for (let i = 0; i < all.length; i++) all.push(...childrenOf(all[i]));
  return all;
}

export function cpuOf(pids) {
  return pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
}

function statusKiB(pid, key) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'latin1').match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export function rssKiB(pids) {
  return pids.reduce((sum, pid) => sum + statusKiB(pid, 'VmRSS'), 0);
}

/** Proportional set size: shared pages divided among the processes sharing them (fair for forks). */
export function pssKiB(pids) {
  let sum = 0;
  for (const pid of pids) {
    try {
      const m = readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1').match(/^Pss:\s+(\d+) kB/m);
      if (m) sum += Number(m[1]);
    } catch {}
  }
  return sum;
}

/** True when one of `pids` holds a TCP socket listening on 127.0.0.1:port (or any address). */
export function isListening(pids, port) {
  const inodes = new Set();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = readFileSync(file, 'latin1'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || cols[3] !== '0A') continue;
      if (cols[1].split(':')[1] === hexPort) inodes.add(cols[9]);
    }
  }
  if (inodes.size === 0) return false;
  for (const pid of pids) {
    let fds = [];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        const m = readlinkSync(`/proc/${pid}/fd/${fd}`).match(/^socket:\[(\d+)\]$/);
        if (m && inodes.has(m[1])) return true;
      } catch {}
    }
  }
  return false;
}

/**
 * Starts a server on a random port, retrying with another port when it exits (bind failure)
 * before listening. Never probes for a "free" port first.
 */
export async function startListening(name, makeArgv, { env, pidsOf = (p) => tree(p.pid), attempts = 12, timeoutMs = 20_000 } = {}) {
  let lastError = '';
  for (let i = 0; i < attempts; i++) {
    const port = 10_000 + Math.floor(Math.random() * 22_000); // below the ephemeral range
    const proc = startProcess(name, makeArgv(port), { env });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !proc.exited) {
      if (isListening(pidsOf(proc), port)) {
        proc.port = port;
        return proc;
      }
      await sleep(40);
    }
    lastError = proc.stderr.slice(-2000) + proc.stdout.slice(-2000);
    await stopProcess(proc);
  }
  throw new Error(`${name} did not start listening after ${attempts} attempts: ${lastError}`);
}

// ---------------------------------------------------------------------------------------------
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The port a child reports as a JSON line ({"port": N}) on stdout, as bench/vm-server.mjs does. */
export async function waitJsonPort(proc) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const line = proc.stdout.split('\n').find((l) => l.startsWith('{'));
    if (line) return JSON.parse(line).port;
    if (proc.exited) break;
    await sleep(20);
  }
  throw new Error(`${proc.name} did not report its port: ${proc.stderr}`);
}

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

export function hardNofile() {
  try {
    const m = readFileSync('/proc/self/limits', 'latin1').match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m);
    return m[2] === 'unlimited' ? Infinity : Number(m[2]);
  } catch {
    return 1024;
  }
}
export function softNofile() {
  try {
    const m = readFileSync('/proc/self/limits', 'latin1').match(/^Max open files\s+(\d+|unlimited)/m);
    return m[1] === 'unlimited' ? Infinity : Number(m[1]);
  } catch {
    return 1024;
  }
}
