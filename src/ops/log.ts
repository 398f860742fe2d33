// The root logger. Redaction is a second line of defence: the code never passes a ticket, a URL
// query or a secret to a log call in the first place (pino docs/redaction.md).
import { pino, type Logger, type DestinationStream } from 'pino';

export const REDACT_PATHS = [
  'ticket',
  'token',
  'secret',
  'password',
  'credentials',
  'authorization',
  '*.ticket',
  '*.token',
  '*.secret',
  '*.password',
  '*.credentials',
  '*.authorization',
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["sec-websocket-protocol"]',
  'headers.authorization',
  'headers["sec-websocket-protocol"]',
];

/** A pino logger; `destination` lets tests capture and parse the lines they assert on. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'console-gateway' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.err },
    },
    destination,
  );
}
