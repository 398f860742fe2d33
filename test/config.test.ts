import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';

function problems(env: Record<string, string>, needs = { tickets: true }): string[] {
  try {
    loadConfig(env, needs);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return [...(error as ConfigError).problems];
  }
  return [];
}

describe('configuration', () => {
  it('has the documented defaults', () => {
    const config = loadConfig({ TICKET_SECRET: 'x'.repeat(32) }, { tickets: true });
    expect(config).toMatchObject({
      port: 8080,
      dataDir: './data',
      logLevel: 'info',
      readyGatingEnabled: true,
      readyTimeoutSeconds: 120,
      readyPollIntervalSeconds: 1,
      readyPaths: ['vnc.html', 'vnc_lite.html', ''],
      portRangeStart: 6100,
      portRangeEnd: 6999,
      maxSessions: 800,
      reconciliationEnabled: true,
      reconciliationIntervalSeconds: 300,
      targetWaitTimeoutSeconds: 25,
      drainTimeoutSeconds: 20,
      ticketAudience: 'console-gateway',
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('reports every problem at once', () => {
    const found = problems({
      PORT: 'eighty',
      TICKET_SECRET: 'short',
      NOVNC_READY_PATHS: 'vnc.html',
      TARGET_ALLOWED_CIDRS: '10.0.0.0/99',
      VNC_WS_PORT_START: '7000',
      VNC_WS_PORT_END: '6000',
      NOVNC_READY_GATING_ENABLED: 'maybe',
      LOG_LEVEL: 'loud',
      PUBLIC_URL: 'ftp://x',
    });
    expect(found).toHaveLength(8);
    expect(found.join('\n')).toMatch(/PORT must be an integer/);
    expect(found.join('\n')).toMatch(/TICKET_SECRET must be at least 32 bytes, got 5/);
  });

  it('never echoes the ticket secret in a problem', () => {
    const found = problems({ TICKET_SECRET: 'hunter2-secret' });
    expect(found.join(' ')).not.toContain('hunter2');
  });

  it('requires a ticket key only for commands that use tickets', () => {
    expect(problems({})).toEqual([expect.stringMatching(/TICKET_SECRET .* or TICKET_JWKS_FILE/)]);
    expect(problems({}, { tickets: false })).toEqual([]);
  });

  it('accepts NOVNC_READY_PATHS=[]: no HTTP step for any target', () => {
    expect(loadConfig({ NOVNC_READY_PATHS: '[]' }, { tickets: false }).readyPaths).toEqual([]);
    expect(problems({ NOVNC_READY_PATHS: '{}' }, { tickets: false })).toEqual([expect.stringMatching(/NOVNC_READY_PATHS must be a JSON array of strings/)]);
  });

  it('takes TARGET_ALLOWED_SOCKET_DIRS as absolute directories, none by default', () => {
    expect(loadConfig({}, { tickets: false }).targetAllowedSocketDirs).toEqual([]);
    expect(loadConfig({ TARGET_ALLOWED_SOCKET_DIRS: '/run/vms/, /var/lib/vms' }, { tickets: false }).targetAllowedSocketDirs).toEqual(['/run/vms', '/var/lib/vms']);
    expect(problems({ TARGET_ALLOWED_SOCKET_DIRS: '/run/vms,vms' }, { tickets: false })).toEqual([
      'TARGET_ALLOWED_SOCKET_DIRS entry "vms" must be an absolute directory path',
    ]);
  });

  it('parses NOVNC_READY_PATHS as a JSON array', () => {
    const config = loadConfig({ NOVNC_READY_PATHS: '["vnc.html"]' }, { tickets: false });
    expect(config.readyPaths).toEqual(['vnc.html']);
  });
});

describe('edge configuration', () => {
  it('has the documented defaults', () => {
    const { edge } = loadConfig({}, { tickets: false });
    expect(edge).toMatchObject({
      trustedProxyHeader: 'x-forwarded-for',
      proxyProtocol: false,
      maxConsolesPerClient: 20,
      maxConsolesPerSession: 10,
      failedUpgradesPerMinute: 60,
      frameAncestors: ["'self'"],
      opsPort: 9464,
      metricsToken: undefined,
      tlsCertFile: undefined,
    });
    expect(edge.trustedProxies.cidrs).toEqual([]);
  });

  it('reports every edge problem in the same list', () => {
    const found = problems({
      TICKET_SECRET: 'x'.repeat(32),
      TRUSTED_PROXIES: '10.0.0.0/40',
      TRUSTED_PROXY_HEADER: 'x-real-ip',
      MAX_CONSOLES_PER_CLIENT: '-1',
      HEADERS_TIMEOUT_SECONDS: '0',
      TLS_CERT_FILE: '/etc/tls/tls.crt',
      METRICS_TOKEN: 'short',
      OPS_PORT: '70000',
    });
    expect(found).toHaveLength(7);
    expect(found.join('\n')).toMatch(/TLS_CERT_FILE and TLS_KEY_FILE go together/);
    expect(found.join('\n')).toMatch(/TRUSTED_PROXIES: "10.0.0.0\/40"/);
  });
});
