// One-time console tickets: compact JWS with an explicit algorithm allowlist (HS256 with a shared
// secret; EdDSA/ES256 against a JWKS so a frontend can mint with a private key the gateway never
// holds). Verification never touches the database; consumption does, and the database is the
// authority: the LRU only short-cuts replays this process has already seen.
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { SignJWT, UnsecuredJWT, createLocalJWKSet, decodeProtectedHeader, errors, jwtVerify, type CryptoKey, type JWTClaimVerificationOptions, type JWTPayload, type JWTVerifyGetKey, type KeyObject, type ProtectedHeaderParameters } from 'jose';
import type { Kysely } from 'kysely';
import { LRUCache } from 'lru-cache';
import { GatewayError } from '../errors.js';
import { GroupCommit } from '../db/group-commit.js';
import { isUuid } from '../db/sessions.js';
import type { Database } from '../db/schema.js';
import { consumeTickets, type Consumption, type Presentation } from '../db/tickets.js';

export interface TicketClaims {
  sessionId: string;
  jti: string;
  expiresAt: Date;
  viewOnly: boolean;
  /** Closes the session's other interactive consoles; never set together with viewOnly. */
  exclusive: boolean;
}

export interface TicketOptions {
  secret?: Uint8Array | undefined;
  /** Parsed JWKS ({ keys: [...] }) holding the frontends' public keys. */
  jwks?: { keys: object[] } | undefined;
  audience: string;
  issuers: readonly string[];
  maxTtlSeconds: number;
  clockToleranceSeconds?: number;
}

const ASYMMETRIC = ['EdDSA', 'ES256'] as const;
const MAX_TICKET_LENGTH = 4096;
const DEFAULT_ISSUER = 'console-gateway';
/** How far the minting clock may run ahead of or behind the gateway's (README "Tickets"). */
export const CLOCK_TOLERANCE_SECONDS = 5;

/** Reads TICKET_JWKS_FILE; throws a one-line error naming the file, never its content. */
export async function readJwksFile(path: string): Promise<{ keys: object[] }> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, 'utf8'));
  } catch (error) {
    throw new Error(`TICKET_JWKS_FILE ${path} is not readable JSON: ${(error as Error).message.split('\n')[0]}`, { cause: error });
  }
  const keys = (parsed as { keys?: unknown })?.keys;
  if (!Array.isArray(keys) || keys.length === 0) throw new Error(`TICKET_JWKS_FILE ${path} has no "keys" array`);
  if (keys.some((k) => typeof k !== 'object' || k === null || 'd' in k)) {
    throw new Error(`TICKET_JWKS_FILE ${path} must hold public keys only`);
  }
  return { keys };
}

export class Tickets {
  private readonly algorithms: string[];
  private readonly jwks: JWTVerifyGetKey | undefined;
  // jti → true for tickets this process consumed or saw refused as used; entries die with the ticket.
  private readonly seen = new LRUCache<string, true>({ max: 100_000, ttlAutopurge: false });
  private readonly batcher: GroupCommit<Presentation, Consumption>;

  constructor(
    private readonly options: TicketOptions,
    db: Kysely<Database>,
  ) {
    this.batcher = new GroupCommit((batch) => consumeTickets(db, batch));
    this.algorithms = [...(options.secret ? ['HS256'] : []), ...(options.jwks ? ASYMMETRIC : [])];
    this.jwks = options.jwks ? createLocalJWKSet(options.jwks as Parameters<typeof createLocalJWKSet>[0]) : undefined;
  }

  /** True when this gateway can mint tickets itself (it holds TICKET_SECRET). */
  get canMint(): boolean {
    return this.options.secret !== undefined;
  }

  /** Checks signature, algorithm, exp, aud, iss, sub and lifetime. Throws TICKET_INVALID / TICKET_EXPIRED. */
  async verify(token: string): Promise<TicketClaims> {
    if (token.length > MAX_TICKET_LENGTH || !/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)) {
      throw new GatewayError('TICKET_INVALID', 'ticket invalid: not a compact JWS');
    }
    const tolerance = this.options.clockToleranceSeconds ?? CLOCK_TOLERANCE_SECONDS;
    const checks: JWTClaimVerificationOptions = {
      audience: this.options.audience,
      ...(this.options.issuers.length > 0 ? { issuer: [...this.options.issuers] } : {}),
      requiredClaims: ['sub', 'jti', 'exp', 'iat'],
      clockTolerance: tolerance,
    };
    let payload: JWTPayload;
    try {
      // The key follows the algorithm in the header, so an HS256 token can never be checked
      // against a public key (the classic HS/RS confusion), and 'none' is never in the list.
      const header = decodeProtectedHeader(token);
      if (header.alg === 'HS256' && this.options.secret !== undefined) payload = verifyHs256(token, header, this.options.secret, checks);
      else ({ payload } = await jwtVerify(token, (header, input) => this.jwks!(header, input), { algorithms: this.algorithms, ...checks }));
    } catch (error) {
      throw verifyError(error);
    }
    const { sub, jti, exp, iat } = payload as { sub: string; jti: string; exp: number; iat: number };
    if (!isUuid(sub)) throw new GatewayError('TICKET_INVALID', 'ticket invalid: its subject is not a session id');
    if (typeof jti !== 'string' || jti.length === 0 || jti.length > 128) throw new GatewayError('TICKET_INVALID', 'ticket invalid: bad jti');
    checkLifetime(iat, exp, this.options.maxTtlSeconds, tolerance);
    const viewOnly = payload.view_only === true;
    // A viewer who cannot type has nothing to hold exclusively: view_only wins.
    return { sessionId: sub.toLowerCase(), jti, expiresAt: new Date(exp * 1000), viewOnly, exclusive: !viewOnly && payload.exclusive === true };
  }

  /**
   * Consumes the ticket once across every process sharing the database; throws TICKET_USED after.
   * In the same round trip reads the ticket's session (undefined if unknown) and registers
   * `console` in the live-console registry (see consumeTickets).
   */
  async consume(claims: TicketClaims, console?: Presentation['console']): Promise<Omit<Consumption, 'won'>> {
    if (this.seen.has(claims.jti)) throw new GatewayError('TICKET_USED', 'ticket already used: ask for a new console link');
    const ttl = Math.max(1, claims.expiresAt.getTime() - Date.now() + 60_000);
    const { won, session, registration } = await this.batcher.submit({ jti: claims.jti, sessionId: claims.sessionId, expiresAt: claims.expiresAt, console });
    this.seen.set(claims.jti, true, { ttl });
    if (!won) throw new GatewayError('TICKET_USED', 'ticket already used: ask for a new console link');
    return { session, registration };
  }

  /**
   * Mints an HS256 ticket with this gateway's secret (the control API's tickets endpoint and the
   * `ticket` command). Its issuer is the first of TICKET_ISSUERS, so the gateway's own tickets pass
   * its own issuer check; `console-gateway` when no allowlist is set.
   */
  async mint(sessionId: string, ttlSeconds: number, viewOnly = false, exclusive = false): Promise<{ ticket: string; expiresAt: Date }> {
    if (!this.options.secret) {
      throw new GatewayError('CONFLICT', 'this gateway holds no TICKET_SECRET: mint tickets with your private key (see README)');
    }
    const issuer = this.options.issuers[0] ?? DEFAULT_ISSUER;
    return mintTicket({ sessionId, key: this.options.secret, ttlSeconds, viewOnly, exclusive, audience: this.options.audience, issuer });
  }
}

const NONE_HEADER = Buffer.from('{"alg":"none"}').toString('base64url');

/**
 * HS256 with node:crypto's HMAC, which answers at once: jose checks through WebCrypto, which runs
 * every HMAC as a thread-pool job, and the hand-off and wake-up cost more than the MAC itself (12%
 * of the gateway's CPU per connect, measured). The claims are then jose's to check, as for any
 * ticket: the verified payload goes through its claims validation under an unsecured header.
 */
function verifyHs256(token: string, header: ProtectedHeaderParameters, secret: Uint8Array, checks: JWTClaimVerificationOptions): JWTPayload {
  // No JWS extension is understood here, as jwtVerify would say of any listed as critical.
  if (header.crit !== undefined || header.b64 !== undefined) throw new errors.JWSInvalid('unsupported header parameter');
  const signed = token.lastIndexOf('.');
  const expected = createHmac('sha256', secret).update(token.slice(0, signed)).digest();
  const given = Buffer.from(token.slice(signed + 1), 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new errors.JWSSignatureVerificationFailed();
  return UnsecuredJWT.decode(`${NONE_HEADER}.${token.slice(token.indexOf('.') + 1, signed)}.`, checks).payload;
}

/**
 * Bounds the lifetime against the gateway's own clock, not only against `iat`: a ticket with `iat`
 * a year ahead and `exp = iat + 300` would otherwise work for a year.
 */
function checkLifetime(iat: number, exp: number, maxTtlSeconds: number, tolerance: number): void {
  const now = Date.now() / 1000;
  if (iat > now + tolerance) {
    throw new GatewayError('TICKET_INVALID', 'ticket issued in the future: check the clock of the system that minted it');
  }
  if (exp - iat > maxTtlSeconds || exp > now + maxTtlSeconds + tolerance) {
    throw new GatewayError('TICKET_INVALID', `ticket lifetime exceeds the maximum of ${maxTtlSeconds} s`);
  }
}

function verifyError(error: unknown): GatewayError {
  if (error instanceof errors.JWTExpired) return new GatewayError('TICKET_EXPIRED', 'ticket expired: ask for a new console link', { cause: error });
  if (error instanceof errors.JWTClaimValidationFailed) {
    const what = error.claim === 'aud' ? 'it is for another audience' : error.claim === 'iss' ? 'its issuer is not allowed' : `claim ${error.claim} is wrong`;
    return new GatewayError('TICKET_INVALID', `ticket invalid: ${what}`, { cause: error });
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return new GatewayError('TICKET_INVALID', 'ticket invalid: signing algorithm not allowed', { cause: error });
  if (error instanceof errors.JWSSignatureVerificationFailed) return new GatewayError('TICKET_INVALID', 'ticket invalid: bad signature', { cause: error });
  if (error instanceof errors.JWKSNoMatchingKey) return new GatewayError('TICKET_INVALID', 'ticket invalid: signed by an unknown key', { cause: error });
  return new GatewayError('TICKET_INVALID', 'ticket invalid: malformed', { cause: error });
}

export interface MintOptions {
  sessionId: string;
  /** A shared secret (HS256, at least 32 bytes) or a private key (EdDSA or ES256). */
  key: Uint8Array | string | CryptoKey | KeyObject;
  /** Required for a private key: 'EdDSA' or 'ES256'. Ignored for a secret. */
  alg?: 'EdDSA' | 'ES256';
  /** The JWKS key id of a private key, so the gateway picks the right public key. */
  kid?: string;
  ttlSeconds?: number;
  viewOnly?: boolean;
  /** Connecting closes the session's other interactive consoles (4409); not with viewOnly. */
  exclusive?: boolean;
  audience?: string;
  issuer?: string;
}

/**
 * Mints a one-time console ticket. For Node frontends:
 * `const { ticket } = await mintTicket({ sessionId, key: process.env.TICKET_SECRET })`.
 */
export async function mintTicket(options: MintOptions): Promise<{ ticket: string; expiresAt: Date }> {
  const key = typeof options.key === 'string' ? new TextEncoder().encode(options.key) : options.key;
  const symmetric = key instanceof Uint8Array;
  if (symmetric && key.length < 32) throw new Error('ticket secret must be at least 32 bytes');
  if (!symmetric && options.alg === undefined) throw new Error('alg (EdDSA or ES256) is required with a private key');
  if (options.viewOnly && options.exclusive) throw new Error('a view-only ticket cannot be exclusive');
  const now = Math.floor(Date.now() / 1000);
  const exp = now + (options.ttlSeconds ?? 60);
  const header = { alg: symmetric ? 'HS256' : options.alg!, typ: 'JWT', ...(options.kid ? { kid: options.kid } : {}) };
  const ticket = await new SignJWT({ ...(options.viewOnly ? { view_only: true } : {}), ...(options.exclusive ? { exclusive: true } : {}) })
    .setProtectedHeader(header)
    .setSubject(options.sessionId)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(exp)
    .setAudience(options.audience ?? 'console-gateway')
    .setIssuer(options.issuer ?? DEFAULT_ISSUER)
    .sign(key);
  return { ticket, expiresAt: new Date(exp * 1000) };
}
