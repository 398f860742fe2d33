// Reads one series from a Prometheus registry, or from /metrics text, so tests can assert deltas.
import type { Registry } from 'prom-client';

/** The value of `name` with exactly `labels` (a histogram: pass name_count or name_sum). */
export async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  return valueIn(await registry.metrics(), name, labels);
}

/** The same, from the Prometheus text format; 0 when the series has not been written yet. */
export function valueIn(text: string, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const have = (match[2] ?? '').split(',').filter(Boolean).sort().join(',');
    if (have === wanted) return Number(match[3]);
  }
  return 0;
}
