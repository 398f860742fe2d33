// The control-plane operations, shared by the HTTP API and the CLI: input validation, target
// checks and the database calls, so both surfaces answer the same inputs the same way.
import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Config } from '../config.js';
import type { Database, Protocol } from '../db/schema.js';
import { commitTarget, createSession, isSocketTarget, isUuid, requireSession, setTargetCredentials, stopSession, viewOf, type SessionView, type Target } from '../db/sessions.js';
import { sealCredentials, validateCredentials } from '../console/credentials.js';
import { GatewayError } from '../errors.js';
import { checkProtocolFit, validateTargetShape, type Resolver } from '../console/target.js';
import { checkTarget, rulesOf } from '../console/vm-endpoint.js';
import type { Tickets } from '../console/ticket.js';
import type { FleetMetrics } from '../ops/fleet-metrics.js';
import { countConsoles, kickConsoles } from '../db/live-consoles.js';
import type { CleanupOutcome } from '../fleet/cleanup.js';

export interface ControlDeps {
  config: Config;
  db: Kysely<Database>;
  tickets: Tickets;
  /** Cleans a stopped session (teardown hook, port release, exactly once); never throws for a failed hook. */
  cleanup: (id: string, reason?: string) => Promise<CleanupOutcome>;
  resolver?: Resolver;
  fleetMetrics?: FleetMetrics;
}

const OWNER_MAX = 200;

function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new GatewayError('BAD_REQUEST', 'the body must be a JSON object');
  return body as Record<string, unknown>;
}

function rejectUnknown(body: Record<string, unknown>, known: readonly string[]): void {
  const unknown = Object.keys(body).filter((k) => !known.includes(k));
  if (unknown.length > 0) throw new GatewayError('BAD_REQUEST', `unknown field${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}`);
}

export function requireId(id: string): string {
  if (!isUuid(id)) throw new GatewayError('BAD_REQUEST', 'session id must be a UUID');
  return id.toLowerCase();
}

/**
 * Validates a target and checks where it points: every resolved address against
 * TARGET_ALLOWED_CIDRS, a socket path against TARGET_ALLOWED_SOCKET_DIRS. Checked again at every
 * dial; a socket that does not exist yet is fine here (the VM may not have started).
 */
async function checkedTarget(deps: ControlDeps, raw: unknown): Promise<Target> {
  const target = validateTargetShape(objectBody(raw));
  try {
    await checkTarget(target, rulesOf(deps.config, deps.resolver));
  } catch (error) {
    if (!(error instanceof GatewayError && error.code === 'DIAL_FAILED' && isSocketTarget(target))) throw error;
  }
  return target;
}

/**
 * Splits `target.credentials` off a target body and seals it for session `id`: VNC credentials
 * need a raw VNC target, where the gateway speaks RFB itself. undefined when none are given.
 */
function sealedFrom(deps: ControlDeps, id: string, protocol: Protocol, raw: unknown): string | undefined {
  if (raw === undefined || raw === null) return undefined;
  const credentials = validateCredentials(raw);
  if (protocol !== 'vnc') {
    throw new GatewayError('BAD_REQUEST', 'target.credentials need a vnc session: the gateway authenticates only where it speaks RFB itself');
  }
  return sealCredentials(deps.config.credentialsKey, id, credentials);
}

function withoutCredentials(raw: unknown): { target: Record<string, unknown>; credentials: unknown } {
  const { credentials, ...target } = objectBody(raw);
  return { target, credentials };
}

export async function createSessionOp(deps: ControlDeps, rawBody: unknown): Promise<SessionView> {
  const body = objectBody(rawBody);
  rejectUnknown(body, ['id', 'protocol', 'ownerId', 'target']);
  const { id, protocol, ownerId, target } = body;
  if (id !== undefined && !isUuid(id)) throw new GatewayError('BAD_REQUEST', 'id must be a UUID');
  if (protocol !== 'vnc' && protocol !== 'websockify') throw new GatewayError('BAD_REQUEST', 'protocol must be "vnc" or "websockify"');
  if (ownerId !== undefined && ownerId !== null && (typeof ownerId !== 'string' || ownerId.length === 0 || ownerId.length > OWNER_MAX)) {
    throw new GatewayError('BAD_REQUEST', `ownerId must be a string of 1-${OWNER_MAX} characters`);
  }
  // The id is fixed before sealing: it is bound into the sealed credentials.
  const sessionId = id === undefined ? randomUUID() : (id as string).toLowerCase();
  const parts = target === undefined || target === null ? undefined : withoutCredentials(target);
  const sealed = parts === undefined ? undefined : sealedFrom(deps, sessionId, protocol, parts.credentials);
  const checked = parts === undefined ? null : await checkedTarget(deps, parts.target);
  if (checked !== null) checkProtocolFit(checked, protocol);
  const input = { id: sessionId, protocol: protocol as Protocol, ownerId: (ownerId as string | undefined) ?? null, target: checked, gatingEnabled: deps.config.readyGatingEnabled };
  if (sealed === undefined) return viewOf(await createSession(deps.db, input));
  // One transaction: the trigger's NOTIFY goes out on commit, when the credentials are there too.
  return viewOf(await deps.db.transaction().execute(async (tx) => {
    await createSession(tx, input);
    return setTargetCredentials(tx, sessionId, sealed);
  }));
}

/** The session, with its live consoles across replicas. */
export async function getSessionOp(deps: ControlDeps, id: string): Promise<SessionView & { consoles: { live: number; exclusive: boolean } }> {
  const row = await requireSession(deps.db, requireId(id));
  return { ...viewOf(row), consoles: await countConsoles(deps.db, row.id) };
}

/** Closes the session's live consoles on every replica (4409); `closed`: how many were live. */
export async function closeConsolesOp(deps: ControlDeps, id: string): Promise<{ closed: number }> {
  const row = await requireSession(deps.db, requireId(id));
  return { closed: await kickConsoles(deps.db, row.id) };
}

/** Commits the target; its credentials replace the stored ones (none given: none stored). */
export async function commitTargetOp(deps: ControlDeps, id: string, rawBody: unknown): Promise<SessionView> {
  const { target: body, credentials } = withoutCredentials(rawBody);
  rejectUnknown(body, ['host', 'port', 'path', 'webRoot', 'socket']);
  const sessionId = requireId(id);
  const target = await checkedTarget(deps, body);
  const session = await requireSession(deps.db, sessionId);
  checkProtocolFit(target, session.protocol);
  const sealed = credentials === undefined || credentials === null ? null : (sealedFrom(deps, session.id, session.protocol, credentials) ?? null);
  return viewOf(await deps.db.transaction().execute(async (tx) => {
    await commitTarget(tx, session.id, target, deps.config.readyGatingEnabled);
    return setTargetCredentials(tx, session.id, sealed);
  }));
}

/**
 * Stops the session (live consoles on every replica close through the NOTIFY), then cleans it:
 * teardown hook and port release. Stopping a stopped session cleans it if nothing has yet.
 */
export async function stopSessionOp(deps: ControlDeps, id: string): Promise<SessionView> {
  const sessionId = requireId(id);
  await stopSession(deps.db, sessionId);
  await deps.cleanup(sessionId);
  return viewOf(await requireSession(deps.db, sessionId));
}

export interface TicketView {
  ticket: string;
  expiresAt: string;
  consoleUrl: string;
}

export async function mintTicketOp(deps: ControlDeps, id: string, rawBody: unknown, publicUrl: string): Promise<TicketView> {
  const body = rawBody === undefined ? {} : objectBody(rawBody);
  rejectUnknown(body, ['ttlSeconds', 'viewOnly', 'exclusive']);
  const { ttlSeconds = deps.config.ticketDefaultTtlSeconds, viewOnly = false, exclusive = false } = body;
  const max = deps.config.ticketMaxTtlSeconds;
  if (typeof ttlSeconds !== 'number' || !Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > max) {
    throw new GatewayError('BAD_REQUEST', `ttlSeconds must be an integer between 1 and ${max}`);
  }
  if (typeof viewOnly !== 'boolean') throw new GatewayError('BAD_REQUEST', 'viewOnly must be true or false');
  if (typeof exclusive !== 'boolean') throw new GatewayError('BAD_REQUEST', 'exclusive must be true or false');
  if (viewOnly && exclusive) throw new GatewayError('BAD_REQUEST', 'a view-only ticket cannot be exclusive');
  const session = await requireSession(deps.db, requireId(id));
  if (session.status === 'stopped' || session.status === 'failed') {
    throw new GatewayError('SESSION_ENDED', `session is ${session.status}; create a new session`);
  }
  const { ticket, expiresAt } = await deps.tickets.mint(session.id, ttlSeconds, viewOnly, exclusive);
  return { ticket, expiresAt: expiresAt.toISOString(), consoleUrl: `${publicUrl}/console?ticket=${ticket}` };
}
