import { chmod, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/ops/log.js';
import { loadConfig } from '../src/config.js';
import { createRuntimeHook, runtimeHookFromConfig } from '../src/fleet/runtime-hook.js';
import { redactOwner, redactText, truncate } from '../src/ops/redact.js';

const SCRIPT = fileURLToPath(new URL('./fixtures/hook-script.mjs', import.meta.url));
const log = createLogger('silent');
const OWNER = 'owner-0123456789-abc123';
const SECRET = 'a-ticket-secret-that-is-32-bytes-long!!';
const session = { sessionId: '6f1c2b1e-0000-4000-8000-000000000001', ownerId: OWNER, protocol: 'vnc', target: { host: '127.0.0.1', port: 5901, path: null } };

async function recordFile(): Promise<string> {
  const file = join(await mkdtemp(join(tmpdir(), 'cg-hook-')), 'calls.jsonl');
  await writeFile(file, '');
  return file;
}

describe('runtime hook', () => {
  it('is absent when no command is configured', () => {
    expect(createRuntimeHook([], 1000, log)).toBeUndefined();
  });

  it('passes the action as the last argument and {action, session} as JSON on stdin, without a shell', async () => {
    const record = await recordFile();
    // A shell would expand this; an argument list passes it through verbatim.
    const hook = createRuntimeHook([process.execPath, SCRIPT, '--record', record, '--label', '$(touch /tmp/pwned) *'], 10_000, log)!;
    const result = await hook.run('teardown', session);
    expect(result.ok).toBe(true);
    expect(result.output).toBe(`removed resources of ${session.sessionId}`);
    const [call] = (await readFile(record, 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(call.action).toBe('teardown');
    expect(call.stdinAction).toBe('teardown');
    expect(call.argv).toContain('$(touch /tmp/pwned) *');
    expect(call.session).toEqual(session);
  });

  it('returns list resources, redacted', async () => {
    const hook = createRuntimeHook([process.execPath, SCRIPT], 10_000, log)!;
    const result = await hook.run('list', session);
    expect(result.resources).toEqual([{ sessionId: session.sessionId, kind: 'container', name: 'vnc', owner: redactOwner(OWNER) }]);
  });

  it('redacts owner ids, JWTs, bearer tokens, passwords and configured secrets in the output', async () => {
    // A hook that got a secret anyway (an operator passed it on) and prints it.
    const hook = createRuntimeHook([process.execPath, SCRIPT, '--mode', 'leak'], 10_000, log, { secrets: [SECRET], env: { LEAKED_SECRET: SECRET } })!;
    const result = await hook.run('diagnostics', session);
    expect(result.ok).toBe(true);
    expect(result.output).toContain('****abc123');
    for (const leaked of [OWNER, 'abcdefghijklmnop', 'eyJhbGciOiJIUzI1NiJ9', 'hunter2', SECRET]) expect(result.output).not.toContain(leaked);
    expect(result.output).toContain('DB_PASSWORD=[redacted]');
  });

  it('truncates a flood of output, keeping the tail', async () => {
    const hook = createRuntimeHook([process.execPath, SCRIPT, '--mode', 'flood'], 10_000, log)!;
    const result = await hook.run('diagnostics', session);
    // 64 KiB are collected, so a 200 KB answer is cut off and is no longer JSON: a failed hook
    // with the tail of what it printed, never an unbounded buffer.
    expect(result.ok).toBe(false);
    expect(result.output.length).toBeLessThan(4 * 1024 + 100);
  });

  it('reports a non-JSON answer, a failure exit and stderr as a failed result', async () => {
    const garbage = await createRuntimeHook([process.execPath, SCRIPT, '--mode', 'garbage'], 10_000, log)!.run('diagnostics', session);
    expect(garbage).toMatchObject({ ok: false, error: 'the runtime hook printed no JSON object' });
    const failed = await createRuntimeHook([process.execPath, SCRIPT, '--mode', 'fail'], 10_000, log)!.run('teardown', session);
    expect(failed).toMatchObject({ ok: false, error: 'the runtime hook reported failure', output: 'could not reach the runtime' });
    expect(failed.stderr).toContain('permission denied');
  });

  it('kills a hook that outlives its timeout, even one that ignores SIGTERM', async () => {
    const started = performance.now();
    const hook = createRuntimeHook([process.execPath, SCRIPT, '--mode', 'ignore-term'], 500, log, { killGraceMs: 300 })!;
    const result = await hook.run('diagnostics', session);
    expect(result).toMatchObject({ ok: false, error: 'the runtime hook timed out after 0.5 s' });
    expect(performance.now() - started).toBeLessThan(3_000);
  });

  it('reports a program that cannot be started', async () => {
    const result = await createRuntimeHook(['/nonexistent/hook'], 1000, log)!.run('list', {});
    expect(result).toMatchObject({ ok: false, error: 'the runtime hook could not be started (ENOENT)' });
  });
});

// The example hooks cannot reach a docker engine or a cluster here: stub `docker` and `kubectl`
// record their arguments, so the test checks the contract and the exact commands run.
describe('example hooks (docker and kubectl stubbed)', () => {
  const ID = '6f1c2b1e-0000-4000-8000-00000000abcd';
  async function stubs(): Promise<{ dir: string; calls: string }> {
    const dir = await mkdtemp(join(tmpdir(), 'cg-stubs-'));
    const calls = join(dir, 'calls.txt');
    const stub = (name: string, listJson: string) =>
      `#!/usr/bin/env bash\necho "${name} $*" >> ${JSON.stringify(calls)}\n` +
      `case "$*" in *ls\\ --all*|*-o\\ json*) echo '${listJson}' ;; *) echo "${name} output for $*" ;; esac\n`;
    await writeFile(join(dir, 'docker'), stub('docker', `[{"Name":"cg-${ID}","Status":"running(2)"},{"Name":"unrelated","Status":"running(1)"}]`));
    await writeFile(join(dir, 'kubectl'), stub('kubectl', `{"items":[{"metadata":{"name":"vnc-0","namespace":"labs","labels":{"console-gateway/session":"${ID}"}},"status":{"phase":"Running"}}]}`));
    await chmod(join(dir, 'docker'), 0o755);
    await chmod(join(dir, 'kubectl'), 0o755);
    await writeFile(calls, '');
    return { dir, calls };
  }
  const example = (name: string) => fileURLToPath(new URL(`../examples/hooks/${name}`, import.meta.url));

  it('compose-hook.sh runs ps, logs, down and ls for the cg-<id> project', async () => {
    const { dir, calls } = await stubs();
    {
      const hook = createRuntimeHook([example('compose-hook.sh')], 10_000, log, { env: { PATH: `${dir}:${process.env.PATH}` } })!;
      const diagnostics = await hook.run('diagnostics', session);
      expect(diagnostics.ok).toBe(true);
      expect(diagnostics.output).toContain(`docker output for compose -p cg-${session.sessionId} ps --all`);
      expect((await hook.run('teardown', session)).ok).toBe(true);
      const list = await hook.run('list', {});
      expect(list.resources).toEqual([{ sessionId: ID, kind: 'compose-project', name: `cg-${ID}`, status: 'running(2)' }]);
      expect((await hook.run('teardown', { sessionId: 'x; rm -rf /' })).ok).toBe(false);
      expect((await readFile(calls, 'utf8')).trim().split('\n')).toEqual([
        `docker compose -p cg-${session.sessionId} ps --all`,
        `docker compose -p cg-${session.sessionId} logs --no-color --timestamps --tail 50`,
        `docker compose -p cg-${session.sessionId} down --remove-orphans --volumes --timeout 10`,
        'docker compose ls --all --format json',
      ]);
    }
  });

  it('kubectl-hook.sh selects by the console-gateway/session label', async () => {
    const { dir, calls } = await stubs();
    {
      const hook = createRuntimeHook([example('kubectl-hook.sh')], 10_000, log, { env: { PATH: `${dir}:${process.env.PATH}` } })!;
      const diagnostics = await hook.run('diagnostics', session);
      expect(diagnostics.ok).toBe(true);
      expect(diagnostics.output).toContain(`kubectl output for get pods -l console-gateway/session=${session.sessionId} -o wide`);
      expect((await hook.run('teardown', session)).ok).toBe(true);
      const list = await hook.run('list', {});
      expect(list.resources).toEqual([{ sessionId: ID, kind: 'pod', name: 'vnc-0', namespace: 'labs', status: 'Running' }]);
      // RECONCILIATION_NAMESPACES: one listing per namespace, concatenated; a bad name is refused.
      const spread = await hook.run('list', {}, { namespaces: ['labs-a', 'labs-b'] });
      expect(spread.resources).toHaveLength(2);
      expect((await hook.run('list', {}, { namespaces: ['--all-namespaces'] })).ok).toBe(false);
      const lines = (await readFile(calls, 'utf8')).trim().split('\n');
      expect(lines).toContain('kubectl --namespace=labs-a get pods -l console-gateway/session -o json');
      expect(lines).toContain('kubectl --namespace=labs-b get pods -l console-gateway/session -o json');
      expect(lines).toContain(`kubectl logs -l console-gateway/session=${session.sessionId} --all-containers --prefix --tail=50`);
      expect(lines).toContain(
        `kubectl delete deployments,statefulsets,jobs,pods,services,configmaps,secrets,persistentvolumeclaims -l console-gateway/session=${session.sessionId} --ignore-not-found --wait=false`,
      );
    }
  });
});

describe('the runtime hook environment', () => {
  it('gives the hook PATH, HOME, LANG and the names in RUNTIME_HOOK_ENV, never the gateway secrets or database', async () => {
    const gatewayEnv = {
      TICKET_SECRET: SECRET,
      CONTROL_TOKEN: 'control-token-0123456789abcdef',
      DATABASE_URL: 'postgresql://gateway:db-password-xyz@db.internal/consoles',
      KUBE_NAMESPACE: 'labs',
      RUNTIME_HOOK_ENV: 'KUBE_NAMESPACE',
      RUNTIME_HOOK_COMMAND: JSON.stringify([process.execPath, SCRIPT, '--mode', 'env']),
    };
    // The gateway's own process environment holds them, as it does in production.
    const saved = { ...process.env };
    Object.assign(process.env, gatewayEnv);
    try {
      const hook = runtimeHookFromConfig(loadConfig(process.env), log)!;
      const result = await hook.run('diagnostics', session);
      expect(result.ok).toBe(true);
      const seen = JSON.parse(result.output) as Record<string, string>;
      const expected = ['HOME', 'LANG', 'PATH'].filter((n) => process.env[n] !== undefined).concat('KUBE_NAMESPACE').sort();
      expect(Object.keys(seen).sort()).toEqual(expected);
      expect(seen.KUBE_NAMESPACE).toBe('labs');
    } finally {
      for (const name of Object.keys(gatewayEnv)) if (!(name in saved)) delete process.env[name];
      Object.assign(process.env, saved);
    }
  });

  it('refuses to pass a secret or a malformed name through RUNTIME_HOOK_ENV', () => {
    expect(() => loadConfig({ RUNTIME_HOOK_ENV: 'KUBECONFIG,TICKET_SECRET,not a name' })).toThrow(
      /RUNTIME_HOOK_ENV must not pass TICKET_SECRET to the runtime hook; RUNTIME_HOOK_ENV entry "not a name" is not a variable name/,
    );
  });
});

describe('redaction', () => {
  it('keeps the last 6 characters of an owner id', () => {
    expect(redactOwner('user-42-abc123')).toBe('****abc123');
    expect(redactOwner(null)).toBeNull();
  });

  it('redacts credentials by shape and secrets by value', () => {
    const text = 'password=hunter2 api_key: "k-123" https://u:pw@db.example/x Bearer tok.en s3cr3t-value';
    const out = redactText(text, ['s3cr3t-value']);
    expect(out).toBe('password=[redacted] api_key: "[redacted]" https://u:[redacted]@db.example/x Bearer [redacted] [redacted]');
  });

  it('truncates to a bound, marking what was cut', () => {
    expect(truncate('abcdef', 3)).toBe('abc\n[… 3 characters truncated]');
    expect(truncate('abcdef', 3, 'tail')).toBe('[… 3 characters truncated]\ndef');
    expect(truncate('abc', 3)).toBe('abc');
  });
});
