import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, UnsecuredJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../src/db/open.js';
import { migrateToLatest } from '../src/db/migrations.js';
import { createLogger } from '../src/ops/log.js';
import { CLOCK_TOLERANCE_SECONDS, Tickets, mintTicket } from '../src/console/ticket.js';
import { GatewayError } from '../src/errors.js';

const SECRET = new TextEncoder().encode('a-shared-secret-of-at-least-32-bytes!!');
let store: Store;
let dir: string;
let edKeys: Awaited<ReturnType<typeof generateKeyPair>>;
let ecKeys: Awaited<ReturnType<typeof generateKeyPair>>;
let jwks: { keys: object[] };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cg-ticket-'));
  store = await openStore({ databaseUrl: undefined, dataDir: dir, log: createLogger('silent') });
  await migrateToLatest(store.db);
  edKeys = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
  ecKeys = await generateKeyPair('ES256');
  jwks = {
    keys: [
      { ...(await exportJWK(edKeys.publicKey)), kid: 'ed', alg: 'EdDSA' },
      { ...(await exportJWK(ecKeys.publicKey)), kid: 'ec', alg: 'ES256' },
    ],
  };
});
afterAll(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const tickets = (overrides: Partial<ConstructorParameters<typeof Tickets>[0]> = {}) =>
  new Tickets({ secret: SECRET, jwks, audience: 'console-gateway', issuers: [], maxTtlSeconds: 300, ...overrides }, store.db);

async function rejection(promise: Promise<unknown>): Promise<GatewayError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(GatewayError);
  return error as GatewayError;
}

async function consumedCount(): Promise<number> {
  const row = await store.db.selectFrom('consumed_tickets').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow();
  return Number(row.n);
}

function sign(claims: Record<string, unknown>, key: Uint8Array | CryptoKey = SECRET, header: Record<string, unknown> = { alg: 'HS256' }) {
  return new SignJWT(claims).setProtectedHeader(header as { alg: string }).sign(key);
}

const now = () => Math.floor(Date.now() / 1000);
const good = (extra: Record<string, unknown> = {}) => ({
  sub: randomUUID(),
  jti: randomUUID(),
  iat: now(),
  exp: now() + 60,
  aud: 'console-gateway',
  iss: 'console-gateway',
  ...extra,
});

describe('ticket verification', () => {
  it('accepts a ticket minted with the shared secret and reads its claims', async () => {
    const sessionId = randomUUID();
    const { ticket } = await mintTicket({ sessionId, key: SECRET, viewOnly: true });
    const claims = await tickets().verify(ticket);
    expect(claims.sessionId).toBe(sessionId);
    expect(claims.viewOnly).toBe(true);
  });

  it('accepts EdDSA and ES256 tickets checked against the JWKS, without the gateway holding a private key', async () => {
    const onlyJwks = tickets({ secret: undefined });
    for (const [keys, alg, kid] of [[edKeys, 'EdDSA', 'ed'], [ecKeys, 'ES256', 'ec']] as const) {
      const { ticket } = await mintTicket({ sessionId: randomUUID(), key: keys.privateKey, alg, kid });
      await expect(onlyJwks.verify(ticket)).resolves.toMatchObject({ viewOnly: false });
    }
  });

  it('refuses an expired ticket with TICKET_EXPIRED', async () => {
    const error = await rejection(tickets().verify(await sign(good({ iat: now() - 120, exp: now() - 60 }))));
    expect(error.code).toBe('TICKET_EXPIRED');
    expect(error.closeCode).toBe(4401);
  });

  it('refuses a ticket for another audience', async () => {
    const error = await rejection(tickets().verify(await sign(good({ aud: 'someone-else' }))));
    expect(error.message).toMatch(/audience/);
  });

  it('refuses an issuer outside the allowlist when one is configured', async () => {
    const error = await rejection(tickets({ issuers: ['https://frontend.example'] }).verify(await sign(good({ iss: 'https://evil.example' }))));
    expect(error.message).toMatch(/issuer/);
    await expect(tickets({ issuers: ['https://frontend.example'] }).verify(await sign(good({ iss: 'https://frontend.example' })))).resolves.toBeDefined();
  });

  it('mints its own tickets with the first allowed issuer, so they pass its own TICKET_ISSUERS check', async () => {
    const strict = tickets({ issuers: ['https://app.example', 'https://admin.example'] });
    const { ticket } = await strict.mint(randomUUID(), 60);
    expect(JSON.parse(Buffer.from(ticket.split('.')[1]!, 'base64url').toString())).toMatchObject({ iss: 'https://app.example' });
    await expect(strict.verify(ticket)).resolves.toMatchObject({ viewOnly: false });
    const open = await tickets().mint(randomUUID(), 60);
    expect(JSON.parse(Buffer.from(open.ticket.split('.')[1]!, 'base64url').toString())).toMatchObject({ iss: 'console-gateway' });
  });

  it('refuses a subject that is not a session id, and a missing jti', async () => {
    expect((await rejection(tickets().verify(await sign(good({ sub: 'not-a-uuid' }))))).message).toMatch(/subject/);
    const { jti: _jti, ...noJti } = good();
    expect((await rejection(tickets().verify(await sign(noJti)))).code).toBe('TICKET_INVALID');
  });

  it('refuses a lifetime over the maximum', async () => {
    const error = await rejection(tickets().verify(await sign(good({ exp: now() + 3600 }))));
    expect(error.message).toBe('ticket lifetime exceeds the maximum of 300 s');
  });

  it('refuses alg none', async () => {
    const unsecured = new UnsecuredJWT(good()).encode();
    expect((await rejection(tickets().verify(unsecured))).code).toBe('TICKET_INVALID');
  });

  it('refuses an HS256 ticket signed with a public key as the HMAC secret (algorithm confusion)', async () => {
    const publicJwk = JSON.stringify(jwks.keys[0]);
    const forged = await sign(good(), new TextEncoder().encode(publicJwk));
    expect((await rejection(tickets().verify(forged))).message).toMatch(/signature/);
    // And with no shared secret configured HS256 is not even an allowed algorithm.
    expect((await rejection(tickets({ secret: undefined }).verify(forged))).message).toMatch(/algorithm not allowed/);
  });

  it('refuses an asymmetric ticket when no JWKS is configured, and a key id the JWKS lacks', async () => {
    const { ticket } = await mintTicket({ sessionId: randomUUID(), key: edKeys.privateKey, alg: 'EdDSA', kid: 'ed' });
    expect((await rejection(tickets({ jwks: undefined }).verify(ticket))).message).toMatch(/algorithm not allowed/);
    const other = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const { ticket: stranger } = await mintTicket({ sessionId: randomUUID(), key: other.privateKey, alg: 'EdDSA', kid: 'ed' });
    expect((await rejection(tickets().verify(stranger))).message).toMatch(/signature/);
  });

  it('refuses a tampered payload and garbage without touching the database', async () => {
    const before = await consumedCount();
    const { ticket } = await mintTicket({ sessionId: randomUUID(), key: SECRET });
    const [h, , s] = ticket.split('.');
    const tampered = `${h}.${Buffer.from(JSON.stringify(good())).toString('base64url')}.${s}`;
    expect((await rejection(tickets().verify(tampered))).message).toMatch(/signature/);
    expect((await rejection(tickets().verify('x'.repeat(5000)))).message).toMatch(/not a compact JWS/);
    expect(await consumedCount()).toBe(before);
  });

  it('refuses an HS256 ticket with a critical header extension, a short signature or no signature', async () => {
    const critical = await sign(good(), SECRET, { alg: 'HS256', crit: ['b64'], b64: true });
    expect((await rejection(tickets().verify(critical))).message).toBe('ticket invalid: malformed');
    const { ticket } = await mintTicket({ sessionId: randomUUID(), key: SECRET });
    expect((await rejection(tickets().verify(ticket.slice(0, -2)))).message).toMatch(/signature/);
    expect((await rejection(tickets().verify(ticket.slice(0, ticket.lastIndexOf('.') + 1)))).message).toMatch(/signature/);
  });

  it('never puts the ticket into the error message', async () => {
    const token = await sign(good({ aud: 'x' }));
    const error = await rejection(tickets().verify(token));
    expect(error.message).not.toContain(token.split('.')[2]);
  });
});

describe('ticket consumption', () => {
  it('lets the first use win and refuses a replay, also from a fresh process-local cache', async () => {
    const { ticket } = await mintTicket({ sessionId: randomUUID(), key: SECRET });
    const first = tickets();
    const claims = await first.verify(ticket);
    await first.consume(claims);
    expect((await rejection(first.consume(claims))).code).toBe('TICKET_USED');
    // A second instance has an empty LRU: the database refuses it.
    expect((await rejection(tickets().consume(claims))).code).toBe('TICKET_USED');
  });

  it('lets exactly one of many concurrent consumers win', async () => {
    const { ticket } = await mintTicket({ sessionId: randomUUID(), key: SECRET });
    const claims = await tickets().verify(ticket);
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => tickets().consume(claims)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
  });
});

// Each signing mode the gateway accepts: the shared secret, and a frontend's private key checked
// against the JWKS. The bad claims are signed properly, so only the lifetime checks can refuse them.
const signers = [
  ['HS256', (claims: Record<string, unknown>) => sign(claims)],
  ['EdDSA (JWKS)', (claims: Record<string, unknown>) => sign(claims, edKeys.privateKey, { alg: 'EdDSA', kid: 'ed' })],
  ['ES256 (JWKS)', (claims: Record<string, unknown>) => sign(claims, ecKeys.privateKey, { alg: 'ES256', kid: 'ec' })],
] as const;

describe.each(signers)('the lifetime of a %s ticket, bounded by the gateway clock', (_alg, signed) => {
  it('refuses a ticket issued in the future, however short its own lifetime', async () => {
    const yearAhead = now() + 365 * 86400;
    const error = await rejection(tickets().verify(await signed(good({ iat: yearAhead, exp: yearAhead + 300 }))));
    expect(error).toMatchObject({ code: 'TICKET_INVALID', closeCode: 4401 });
    expect(error.message).toBe('ticket issued in the future: check the clock of the system that minted it');
    // Just past the tolerance is refused too.
    const justPast = now() + CLOCK_TOLERANCE_SECONDS + 2;
    expect((await rejection(tickets().verify(await signed(good({ iat: justPast, exp: justPast + 60 }))))).message).toMatch(/issued in the future/);
  });

  it('refuses an exp further ahead than the maximum lifetime plus the tolerance', async () => {
    const error = await rejection(tickets().verify(await signed(good({ iat: now(), exp: now() + 300 + CLOCK_TOLERANCE_SECONDS + 5 }))));
    expect(error).toMatchObject({ code: 'TICKET_INVALID', closeCode: 4401, message: 'ticket lifetime exceeds the maximum of 300 s' });
  });

  it('accepts a minting clock ahead by less than the tolerance', async () => {
    const ahead = now() + CLOCK_TOLERANCE_SECONDS - 2;
    await expect(tickets().verify(await signed(good({ iat: ahead, exp: ahead + 300 })))).resolves.toMatchObject({ viewOnly: false });
  });
});

