// `console-gateway demo`: the gateway on the embedded database, our demo VNC server on loopback, and
// a ready session, with a console URL to open. Press Enter for a fresh one-time link.
import { randomBytes } from 'node:crypto';
import { loadConfig, DEFAULT_TARGET_CIDRS } from '../config.js';
import { createLogger } from '../ops/log.js';
import { startServe } from '../app.js';
import { createSessionOp, mintTicketOp } from '../control/control.js';
import { startDemoVncServer } from './demo-vnc.js';
import { waitForSession } from '../console/wait.js';

const DEMO_READY_BUDGET_MS = 30_000;

export async function runDemo(
  env: Readonly<Record<string, string | undefined>>,
  announce: (consoleUrl: string) => void,
  onEnter: (fn: () => void) => () => void,
  until: () => Promise<void>,
): Promise<void> {
  const vnc = await startDemoVncServer({ host: '127.0.0.1', port: 0 });
  const config = loadConfig(
    {
      ...env,
      PORT: env.PORT ?? '8080',
      // A throwaway key for this run only; it is never printed.
      TICKET_SECRET: env.TICKET_SECRET ?? randomBytes(32).toString('base64url'),
      // The demo VNC server is on loopback, which TARGET_ALLOWED_CIDRS refuses unless listed.
      TARGET_ALLOWED_CIDRS: `${env.TARGET_ALLOWED_CIDRS ?? DEFAULT_TARGET_CIDRS},127.0.0.1/32`,
      // A demo serves a handful of consoles: a small cap fits any open-file limit without a warning.
      MAX_CONSOLES: env.MAX_CONSOLES ?? '100',
    },
    { tickets: true },
  );
  const log = createLogger(config.logLevel);
  const running = await startServe(config, log);
  const stopEnter = () => {};
  let unsubscribe = stopEnter;
  try {
    const deps = running.control;
    const session = await createSessionOp(deps, { protocol: 'vnc', ownerId: 'demo', target: { host: '127.0.0.1', port: vnc.port } });
    await waitForSession(running.store.db, running.store.events, session.id, {
      budgetMs: DEMO_READY_BUDGET_MS,
      gatingEnabled: config.readyGatingEnabled,
    });
    const publicUrl = config.publicUrl ?? running.gateway.url;
    const link = async () => {
      const { consoleUrl } = await mintTicketOp(deps, session.id, { ttlSeconds: config.ticketMaxTtlSeconds }, publicUrl);
      announce(consoleUrl);
    };
    await link();
    process.stdout.write(`(one-time link, valid ${config.ticketMaxTtlSeconds} s; press Enter for a fresh one, Ctrl+C to stop)\n`);
    unsubscribe = onEnter(() => void link().catch((error) => log.error({ err: error }, 'minting a demo link failed')));
    await until();
  } finally {
    unsubscribe();
    await running.stop();
    await vnc.close();
  }
}
