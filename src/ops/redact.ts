// Redaction for text that leaves the process as diagnostics: runtime hook output, probe history,
// the `diagnose` report. Log lines never receive such values in the first place; this covers what
// other programs print (compose logs, kubectl output) and what operators read.

const REDACTED = '[redacted]';

/** `****` and the last 6 characters: enough to match a support ticket, not enough to impersonate. */
export function redactOwner(id: string | null | undefined): string | null {
  if (id === null || id === undefined || id === '') return null;
  return `****${id.slice(-6)}`;
}

// Shapes that carry credentials, whoever printed them. Each keeps the key and replaces the value.
const PATTERNS: readonly [RegExp, string][] = [
  // A compact JWS/JWT (tickets among them): three base64url parts, the first a JSON header.
  [/\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/g, REDACTED],
  [/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/gi, `$1 ${REDACTED}`],
  // password=…, passwd: …, secret=…, client_secret: "…", api_key=…, token=…, ticket=…
  [
    /\b([A-Za-z0-9_-]*(?:password|passwd|pwd|secret|token|ticket|api[_-]?key|access[_-]?key)[A-Za-z0-9_-]*)(\s*["']?\s*[:=]\s*["']?)([^\s"'&,;]+)/gi,
    `$1$2${REDACTED}`,
  ],
  // Credentials inside URLs: scheme://user:password@host
  [/\b([a-z][a-z0-9+.-]*:\/\/[^\s:/@]+:)[^\s@/]+@/gi, `$1${REDACTED}@`],
];

/**
 * Replaces every exact occurrence of `secrets` (TICKET_SECRET, CONTROL_TOKEN, owner ids…) and
 * anything shaped like a credential. Secrets shorter than 4 characters are ignored: replacing
 * them would shred ordinary text without protecting anything.
 */
export function redactText(text: string, secrets: readonly (string | null | undefined)[] = []): string {
  let out = text;
  for (const secret of secrets) {
    if (typeof secret === 'string' && secret.length >= 4) out = out.split(secret).join(REDACTED);
  }
  for (const [pattern, replacement] of PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

/** Owner ids are redacted to their `****abc123` form rather than removed, so people can match them. */
export function redactOwnerIn(text: string, ownerId: string | null | undefined): string {
  if (typeof ownerId !== 'string' || ownerId.length < 4) return text;
  return text.split(ownerId).join(redactOwner(ownerId)!);
}

/** Keeps at most `max` characters, the tail when `keep` is 'tail' (logs: the last lines matter). */
export function truncate(text: string, max: number, keep: 'head' | 'tail' = 'head'): string {
  if (text.length <= max) return text;
  const dropped = text.length - max;
  return keep === 'tail'
    ? `[… ${dropped} characters truncated]\n${text.slice(-max)}`
    : `${text.slice(0, max)}\n[… ${dropped} characters truncated]`;
}

/** Applies `scrub` and truncates every string inside a JSON-like value (depth and size bounded). */
export function redactValue(value: unknown, scrub: (text: string) => string, maxString: number, depth = 0): unknown {
  if (typeof value === 'string') return truncate(scrub(value), maxString);
  if (value === null || typeof value !== 'object') return value;
  if (depth > 6) return '[… nested too deep]';
  if (Array.isArray(value)) return value.slice(0, 100).map((v) => redactValue(v, scrub, maxString, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value).slice(0, 100)) out[key] = redactValue(v, scrub, maxString, depth + 1);
  return out;
}
