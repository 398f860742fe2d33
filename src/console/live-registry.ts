// This replica's side of the shared live-console registry: it registers each console before the
// browser's handshake is answered (so "in exclusive use" is a refusal with a reason), renews the
// rows while they live, and carries out takeover and kick notifications for the consoles it holds.
// A console that registered but is not live yet when a takeover arrives is marked, and ended the
// moment it goes live, so no console slips between the registry and this process's set.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { SessionEvents } from '../db/events.js';
import { GroupCommit } from '../db/group-commit.js';
import { registerConsoles, registerExclusiveConsole, renewConsoles, unregisterConsoles, type LiveRow, type Registration } from '../db/live-consoles.js';
import type { Database } from '../db/schema.js';
import { GatewayError, type ErrorCode } from '../errors.js';
import type { Consoles } from './consoles.js';

export interface ClaimOptions {
  consoleId: string;
  sessionId: string;
  viewOnly: boolean;
  exclusive: boolean;
}

export interface Claim {
  /** Call once the console is live (in Consoles): ends it at once if it was taken over meanwhile. */
  live(): void;
  /** Removes the registry row; never throws (a row left behind expires). */
  release(): Promise<void>;
}

const TTL_MS = 30_000;
const RENEW_MS = 10_000;

const TAKEN_OVER: [ErrorCode, string] = ['CONSOLE_TAKEN_OVER', 'taken over by another viewer'];
const KICKED: [ErrorCode, string] = ['CONSOLE_KICKED', 'the console was closed by an administrator'];

export class LiveRegistry {
  readonly replicaId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  private readonly pending = new Map<string, ClaimOptions & { ended?: [ErrorCode, string] }>();
  /** Claims not yet released, so stop() can let their rows go before the database closes. */
  private unreleased = 0;
  private onAllReleased: (() => void) | undefined;
  private readonly renewer: NodeJS.Timeout;
  // The connect path's registry writes, group-committed: one statement per burst, not per console.
  private readonly adding: GroupCommit<LiveRow, Registration>;
  private readonly removing: GroupCommit<string, void>;
  private readonly onControl = (action: 'takeover' | 'kick', sessionId: string, except: string | undefined) => {
    const end = action === 'kick' ? KICKED : TAKEN_OVER;
    const hit = (c: { id?: string | undefined; sessionId: string; viewOnly?: boolean | undefined }) =>
      c.sessionId === sessionId && (action === 'kick' || (c.id !== except && c.viewOnly !== true));
    for (const c of this.consoles.live) if (hit(c)) c.end(...end);
    for (const [id, p] of this.pending) if (hit({ ...p, id })) p.ended ??= end;
  };

  constructor(
    private readonly db: Kysely<Database>,
    private readonly events: SessionEvents,
    private readonly consoles: Consoles,
    private readonly log: Logger,
  ) {
    this.adding = new GroupCommit((rows) => registerConsoles(db, rows));
    this.removing = new GroupCommit((ids) => unregisterConsoles(db, ids));
    events.on('control', this.onControl);
    this.renewer = setInterval(() => {
      renewConsoles(db, this.replicaId, TTL_MS).catch((error) => log.warn({ err: error }, 'renewing the live-console registry failed'));
    }, RENEW_MS);
    this.renewer.unref();
  }

  /** Registers a console; throws CONSOLE_IN_EXCLUSIVE_USE, or the database's error. */
  async claim(options: ClaimOptions): Promise<Claim> {
    const { consoleId } = options;
    this.pending.set(consoleId, { ...options });
    const row = { id: consoleId, sessionId: options.sessionId, replicaId: this.replicaId, viewOnly: options.viewOnly, exclusive: options.exclusive, ttlMs: TTL_MS };
    try {
      if (options.exclusive) await registerExclusiveConsole(this.db, row);
      else refuseUnless(await this.adding.submit(row));
    } catch (error) {
      this.pending.delete(consoleId);
      throw error;
    }
    this.unreleased++;
    let released = false;
    return {
      live: () => {
        const ended = this.pending.get(consoleId)?.ended;
        this.pending.delete(consoleId);
        if (ended === undefined) return;
        for (const c of this.consoles.live) if (c.id === consoleId) c.end(...ended);
      },
      release: async () => {
        if (released) return;
        released = true;
        this.pending.delete(consoleId);
        await this.removing.submit(consoleId).catch((error) => this.log.warn({ err: error }, 'removing a console from the registry failed; it will expire'));
        if (--this.unreleased === 0) this.onAllReleased?.();
      },
    };
  }

  /** Stops renewing; each console's row goes when it ends (or expires, if this process dies). */
  async stop(graceMs = 2_000): Promise<void> {
    clearInterval(this.renewer);
    this.events.off('control', this.onControl);
    const grace = new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref());
    const allReleased = new Promise<void>((resolve) => (this.onAllReleased = resolve));
    if (this.unreleased === 0) return;
    await Promise.race([allReleased, grace]);
  }
}

function refuseUnless(registration: Registration): void {
  if (registration === 'exclusive-held') throw new GatewayError('CONSOLE_IN_EXCLUSIVE_USE', 'the console is in exclusive use');
  if (registration === 'no-session') throw new GatewayError('SESSION_NOT_FOUND', 'unknown console session');
}
