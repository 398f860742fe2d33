// VNC credentials stored with a session's target, sealed with CREDENTIALS_KEY (AES-256-GCM) so a
// database dump or backup does not hold them in the clear. The session id is the additional
// authenticated data: a sealed value copied onto another session's row does not open there.
// Nothing here logs; callers must never put a password or a sealed value in a log line or a reply.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { GatewayError } from '../errors.js';

export interface Credentials {
  password: string;
}

const VERSION = 'v1';
const IV_BYTES = 12; // NIST SP 800-38D §8.2: 96-bit nonces, random per seal
const TAG_BYTES = 16;
/** The VNC authentication challenge uses 8 bytes of the password; longer input is no secret. */
const MAX_PASSWORD_CHARS = 256;

/** Validates `credentials` from an API body or the CLI; throws BAD_REQUEST naming the problem. */
export function validateCredentials(raw: unknown): Credentials {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new GatewayError('BAD_REQUEST', 'target.credentials must be an object like {"password": "…"}');
  }
  const unknown = Object.keys(raw).filter((k) => k !== 'password');
  if (unknown.length > 0) throw new GatewayError('BAD_REQUEST', `unknown field in target.credentials: ${unknown.join(', ')}`);
  const { password } = raw as { password?: unknown };
  if (typeof password !== 'string' || password.length === 0 || password.length > MAX_PASSWORD_CHARS) {
    throw new GatewayError('BAD_REQUEST', `target.credentials.password must be a string of 1-${MAX_PASSWORD_CHARS} characters`);
  }
  return { password };
}

/** Seals `credentials` for the row of `sessionId`: "v1.<iv>.<tag>.<ciphertext>" in base64url. */
export function sealCredentials(key: Uint8Array | undefined, sessionId: string, credentials: Credentials): string {
  if (key === undefined) {
    throw new GatewayError('BAD_REQUEST', 'this gateway cannot store console credentials: set CREDENTIALS_KEY (32 bytes, base64)');
  }
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(Buffer.from(sessionId.toLowerCase()));
  const sealed = Buffer.concat([cipher.update(JSON.stringify(credentials), 'utf8'), cipher.final()]);
  return [VERSION, iv, cipher.getAuthTag(), sealed].map((p) => (typeof p === 'string' ? p : p.toString('base64url'))).join('.');
}

/**
 * Opens the sealed credentials of `sessionId`'s row; undefined when none are stored. Throws
 * CREDENTIALS_UNAVAILABLE when the key is missing or is not the one that sealed them.
 */
export function openCredentials(key: Uint8Array | undefined, sessionId: string, sealed: string | null | undefined): Credentials | undefined {
  if (sealed === null || sealed === undefined) return undefined;
  if (key === undefined) {
    throw new GatewayError('CREDENTIALS_UNAVAILABLE', 'the session has stored console credentials but this gateway has no CREDENTIALS_KEY');
  }
  const [version, iv, tag, data] = sealed.split('.');
  try {
    if (version !== VERSION || iv === undefined || tag === undefined || data === undefined) throw new Error('unknown format');
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'), { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.from(sessionId.toLowerCase()));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    const text = Buffer.concat([decipher.update(Buffer.from(data, 'base64url')), decipher.final()]).toString('utf8');
    return validateCredentials(JSON.parse(text));
  } catch (error) {
    // The cause is an OpenSSL "unable to authenticate data" or a parse error: nothing secret in it.
    throw new GatewayError(
      'CREDENTIALS_UNAVAILABLE',
      'the stored console credentials cannot be opened: CREDENTIALS_KEY differs from the key that stored them',
      { cause: error },
    );
  }
}
