// deploy/: every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-models),
// a broken one fails, and the manifests, the compose file, HAProxy's configuration and the
// Dockerfile agree with each other and with the gateway's configuration names.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Deployment } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Service } from 'kubernetes-models/v1';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments, parse as parseYaml } from 'yaml';

const ROOT = resolve(import.meta.dirname, '..');
const K8S = join(ROOT, 'deploy/kubernetes');
const COMPOSE = join(ROOT, 'deploy/compose');

// apiVersion/kind → the model that validates it against the Kubernetes OpenAPI schema.
const MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'batch/v1/Job': Job,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
};

/** Validates one manifest object; throws naming what is wrong. */
function validate(manifest: any): void {
  const Model = MODELS[`${manifest?.apiVersion}/${manifest?.kind}`];
  if (Model === undefined) throw new Error(`no schema for ${manifest?.apiVersion} ${manifest?.kind}`);
  new Model(manifest).validate();
}

function manifests(): { file: string; doc: any }[] {
  return readdirSync(K8S)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((file) =>
      parseAllDocuments(readFileSync(join(K8S, file), 'utf8')).map((document) => {
        if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0]!.message}`);
        return { file, doc: document.toJS() };
      }),
    );
}

const byKind = (kind: string) => manifests().find((m) => m.doc.kind === kind)!.doc;

/** Every environment variable name the gateway reads, from the configuration modules themselves. */
function configNames(): Set<string> {
  const source = ['src/config.ts', 'src/edge-config.ts'].map((f) => readFileSync(join(ROOT, f), 'utf8')).join('\n');
  return new Set([...source.matchAll(/(?:str|num|bool|list)\('([A-Z0-9_]+)'|env\.([A-Z0-9_]+)/g)].map((m) => m[1] ?? m[2]!));
}

describe('the Kubernetes manifests', () => {
  it('all validate against the Kubernetes schemas', () => {
    const all = manifests();
    expect(all.map((m) => m.doc.kind).sort()).toEqual(['ConfigMap', 'Deployment', 'Job', 'NetworkPolicy', 'PodDisruptionBudget', 'Service']);
    for (const { file, doc } of all) expect(() => validate(doc), file).not.toThrow();
  });

  it('fails validation on a broken manifest', () => {
    const broken = structuredClone(byKind('Deployment'));
    broken.spec.template.spec.containers[0].ports[0].containerPort = 'eighty';
    expect(() => validate(broken)).toThrow(/containerPort/);
    const missing = structuredClone(byKind('Deployment'));
    delete missing.spec.selector;
    expect(() => validate(missing)).toThrow(/selector/);
    const pdb = structuredClone(byKind('PodDisruptionBudget'));
    pdb.spec.maxUnavailable = { one: 1 };
    expect(() => validate(pdb)).toThrow();
    expect(() => validate({ apiVersion: 'v1', kind: 'Podd' })).toThrow(/no schema/);
  });

  it('runs the gate as a sidecar with probes on the ops port, and the gateway probed on /readyz and /healthz', () => {
    const containers = byKind('Deployment').spec.template.spec.containers;
    const gateway = containers.find((c: any) => c.name === 'gateway');
    const gate = containers.find((c: any) => c.name === 'gate');
    expect(gateway.args).toEqual(['serve']);
    expect(gate.args).toEqual(['gate']);
    expect(gateway.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'http' });
    expect(gateway.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'http' });
    expect(gate.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'ops' });
    expect(gate.ports).toEqual([{ name: 'ops', containerPort: 9464 }]);
    expect(gate.env.find((e: any) => e.name === 'OPS_PORT').value).toBe('9464');
    expect(gateway.env.find((e: any) => e.name === 'GATE_ENABLED').value).toBe('false');
  });

  it('gives a stopping pod its preStop pause, the whole drain and the last close frames before SIGKILL', () => {
    const spec = byKind('Deployment').spec.template.spec;
    const preStop = Number(spec.containers.find((c: any) => c.name === 'gateway').lifecycle.preStop.exec.command[1]);
    const drain = Number(byKind('ConfigMap').data.DRAIN_TIMEOUT_SECONDS);
    expect(spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(preStop + drain + 1);
    expect(spec.terminationGracePeriodSeconds).toBeLessThanOrEqual(preStop + drain + 10);
  });

  it('lets the gateway reach only the VM network, PostgreSQL and DNS', () => {
    const policy = byKind('NetworkPolicy').spec;
    const blocks = policy.egress.flatMap((rule: any) => rule.to.filter((to: any) => to.ipBlock).map((to: any) => to.ipBlock.cidr));
    expect(blocks.sort()).toEqual(byKind('ConfigMap').data.TARGET_ALLOWED_CIDRS.split(',').sort());
    const ports = policy.egress.flatMap((rule: any) => (rule.ports ?? []).map((p: any) => `${p.protocol}/${p.port}`));
    expect(ports.sort()).toEqual(['TCP/53', 'TCP/5432', 'UDP/53']);
    expect(policy.policyTypes).toEqual(['Ingress', 'Egress']);
  });

  it('sets only configuration names the gateway reads', () => {
    const known = configNames();
    const set = [
      ...Object.keys(byKind('ConfigMap').data),
      ...manifests()
        .flatMap(({ doc }) => doc.spec?.template?.spec?.containers ?? [])
        .flatMap((c: any) => (c.env ?? []).map((e: any) => e.name)),
    ];
    expect(set.filter((name) => !known.has(name))).toEqual([]);
  });
});

describe('the compose file', () => {
  const compose = parseYaml(readFileSync(join(COMPOSE, 'compose.yaml'), 'utf8'), { merge: true });

  it('runs PostgreSQL, the migration, two gateway replicas behind HAProxy and the gate', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['gate', 'gateway-1', 'gateway-2', 'haproxy', 'migrate', 'postgres']);
    for (const replica of ['gateway-1', 'gateway-2']) {
      expect(compose.services[replica].command).toEqual(['serve']);
      expect(compose.services[replica].depends_on.migrate.condition).toBe('service_completed_successfully');
    }
    expect(compose.services.gate.command).toEqual(['gate']);
    expect(compose.services.migrate.command).toEqual(['migrate']);
    expect(compose.services.haproxy.volumes[0]).toMatch(/^\.\/haproxy\.cfg:/);
    // HAProxy's fixed address is the one proxy the replicas trust.
    expect(compose.services['gateway-1'].environment.TRUSTED_PROXIES).toBe(`${compose.services.haproxy.networks.console.ipv4_address}/32`);
  });

  it('sets only configuration names the gateway reads', () => {
    const known = configNames();
    const names = ['gateway-1', 'gate', 'migrate'].flatMap((s) => Object.keys(compose.services[s].environment));
    expect(names.filter((name) => !known.has(name))).toEqual([]);
  });

  it('has an HAProxy configuration that HAProxy accepts, checking each replica on /readyz', () => {
    const file = join(COMPOSE, 'haproxy.cfg');
    // -c parses and checks; the replicas' names resolve only inside compose (init-addr none).
    execFileSync('/usr/sbin/haproxy', ['-c', '-q', '-f', file], { stdio: 'pipe' });
    const cfg = readFileSync(file, 'utf8');
    expect(cfg).toMatch(/http-check send meth GET uri \/readyz/);
    expect(cfg).toMatch(/option forwardfor/);
    for (const replica of ['gateway-1', 'gateway-2']) expect(cfg).toContain(`server ${replica} ${replica}:8080`);
  });
});

describe('the Dockerfile', () => {
  it('exposes the ports and runs as the user the manifests expect', () => {
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toMatch(/^EXPOSE 8080 9464$/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", "dist\/cli.js"\]$/m);
    // The node images' "node" user is uid 1000; runAsNonRoot needs it numeric.
    expect(byKind('Deployment').spec.template.spec.securityContext.runAsUser).toBe(1000);
  });
});
