// Telling "the database cannot serve right now" from a bug. The first is transient and answered
// 503 / 1013 with words that say to try again; the second stays a 500 / 1011 internal error.
import { GatewayError } from '../errors.js';

// Node socket errors on the way to PostgreSQL.
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOENT']);

// SQLSTATE (PostgreSQL appendix A): 08 connection exception, 53 insufficient resources, 57P0x
// operator intervention (shutdown, cannot connect now), 57014 a statement timeout, 3D000 the
// database is gone, 28 the login was refused.
const UNAVAILABLE_SQLSTATE = /^(08|53|57P0|57014|3D000|28)/;

// pg's own words for a connection that died or never came up (it sets no code on these).
const PG_CONNECTION_MESSAGES = /Connection terminated|timeout exceeded when trying to connect|connection error and is not queryable|Query read timeout|PGlite is closed/i;

/** True when `error` says the database is unreachable or refusing work, not that a query is wrong. */
export function isDatabaseUnavailable(error: unknown): boolean {
  if (error instanceof GatewayError || typeof error !== 'object' || error === null) return false;
  const { code, message } = error as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (NETWORK_CODES.has(code) || UNAVAILABLE_SQLSTATE.test(code))) return true;
  return typeof message === 'string' && PG_CONNECTION_MESSAGES.test(message);
}

export const DATABASE_UNAVAILABLE_MESSAGE = 'the console database is unreachable; try again shortly';

/** DATABASE_UNAVAILABLE with the original on `cause`, for an error isDatabaseUnavailable accepted. */
export function databaseUnavailable(cause: unknown): GatewayError {
  return new GatewayError('DATABASE_UNAVAILABLE', DATABASE_UNAVAILABLE_MESSAGE, { cause });
}
