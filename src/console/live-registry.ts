// This replica's side of the shared live-console registry: each console is in it from its ticket's
// consume (the row rides in that statement; an exclusive console registers once its VM answered),
// so "in exclusive use" is a refusal with a reason before any wait, and a kick or takeover reaches a
// console still waiting for its VM. It renews the rows while they live, and carries out takeover
// and kick notifications for the consoles it holds: a live console is ended at once, one not live
// yet is refused with the same reason (its wait aborted), so none slips between the two.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { SessionEvents } from '../db/events.js';
import { GroupCommit } from '../db/group-commit.js';
import { registerExclusiveConsole, renewConsoles, unregisterConsoles, type Registration } from '../db/live-consoles.js';
import type { Database } from '../db/schema.js';
import type { Presentation } from '../db/tickets.js';
import { GatewayError, type ErrorCode } from '../errors.js';
import type { Consoles } from './consoles.js';

export interface ClaimOptions {
  consoleId: string;
  sessionId: string;
  viewOnly: boolean;
  exclusive: boolean;
  /** Called once if the console is taken over or kicked before it is live (abort its wait). */
  onEnd(code: ErrorCode, message: string): void;
}

/** A console from its ticket to going live. */
export interface Registering {
  /** The registry row for the ticket's consume to add; undefined for an exclusive console. */
  readonly row: Presentation['console'];
  /** Takes the consume's answer for the row: throws CONSOLE_IN_EXCLUSIVE_USE or SESSION_NOT_FOUND. */
  registered(registration: Registration | undefined): void;
  /** Once the VM answered: registers an exclusive console (taking the others over); then the claim. */
  claim(): Promise<Claim>;
  /** The console will not go live: lets it and its row go. Never throws; once only. */
  cancel(): Promise<void>;
}

export interface Claim {
  /** Call once the console is live (in Consoles): ends it at once if it was taken over meanwhile. */
  live(): void;
  /** Removes the registry row; never throws (a row left behind expires). */
  release(): Promise<void>;
}

const TTL_MS = 30_000;
const RENEW_MS = 10_000;
const REMOVE_LINGER_MS = 200;

const TAKEN_OVER: [ErrorCode, string] = ['CONSOLE_TAKEN_OVER', 'taken over by another viewer'];
const KICKED: [ErrorCode, string] = ['CONSOLE_KICKED', 'the console was closed by an administrator'];

export class LiveRegistry {
  readonly replicaId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  private readonly pending = new Map<string, ClaimOptions & { ended?: [ErrorCode, string] }>();
  /** Consoles begun and not yet let go, so stop() can let their rows go before the database closes. */
  private unreleased = 0;
  private onAllReleased: (() => void) | undefined;
  private readonly renewer: NodeJS.Timeout;
  // Ends are group-committed with a short linger: nothing waits for them, and the ends of many
  // consoles then share one statement even at a few connects per second.
  private readonly removing: GroupCommit<string, void>;
  private readonly onControl = (action: 'takeover' | 'kick', sessionId: string, except: string | undefined) => {
    const end = action === 'kick' ? KICKED : TAKEN_OVER;
    const hit = (c: { id?: string | undefined; sessionId: string; viewOnly?: boolean | undefined }) =>
      c.sessionId === sessionId && (action === 'kick' || (c.id !== except && c.viewOnly !== true));
    for (const c of this.consoles.live) if (hit(c)) c.end(...end);
    for (const [id, p] of this.pending) {
      if (!hit({ ...p, id }) || p.ended !== undefined) continue;
      p.ended = end;
      p.onEnd(...end);
    }
  };

  constructor(
    private readonly db: Kysely<Database>,
    private readonly events: SessionEvents,
    private readonly consoles: Consoles,
    private readonly log: Logger,
  ) {
    this.removing = new GroupCommit((ids) => unregisterConsoles(db, ids), REMOVE_LINGER_MS);
    events.on('control', this.onControl);
    this.renewer = setInterval(() => {
      renewConsoles(db, this.replicaId, TTL_MS).catch((error) => log.warn({ err: error }, 'renewing the live-console registry failed'));
    }, RENEW_MS);
    this.renewer.unref();
  }

  /** Starts a console's registration, before its ticket is consumed. */
  begin(options: ClaimOptions): Registering {
    this.pending.set(options.consoleId, { ...options });
    this.unreleased++;
    // The closures below outlive the upgrade (a live console's claim holds them): they name only
    // ids and flags, never `options`, whose onEnd would keep the whole upgrade alive with them.
    const { consoleId, sessionId, exclusive } = options;
    // Whether a row of this console may be in the registry (removed when the console ends).
    let hasRow = !exclusive;
    let letGo = false;
    const release = async () => {
      if (letGo) return;
      letGo = true;
      this.pending.delete(consoleId);
      if (hasRow) await this.remove(consoleId, exclusive);
      if (--this.unreleased === 0) this.onAllReleased?.();
    };
    return {
      row: exclusive ? undefined : { id: consoleId, replicaId: this.replicaId, viewOnly: options.viewOnly, ttlMs: TTL_MS },
      registered: (registration) => {
        if (exclusive) return;
        hasRow = registration === 'added';
        refuseUnless(registration ?? 'no-session');
      },
      claim: async () => {
        if (exclusive) {
          hasRow = true;
          await registerExclusiveConsole(this.db, { id: consoleId, sessionId, replicaId: this.replicaId, viewOnly: false, exclusive: true, ttlMs: TTL_MS });
        }
        return { live: () => this.wentLive(consoleId), release };
      },
      cancel: release,
    };
  }

  /** The console is live: it is ended now if a takeover or kick reached it while pending. */
  private wentLive(consoleId: string): void {
    const ended = this.pending.get(consoleId)?.ended;
    this.pending.delete(consoleId);
    if (ended === undefined) return;
    for (const c of this.consoles.live) if (c.id === consoleId) c.end(...ended);
  }

  private async remove(consoleId: string, exclusive: boolean): Promise<void> {
    try {
      // An exclusive row blocks others: it goes at once.
      if (exclusive) await unregisterConsoles(this.db, [consoleId]);
      else await this.removing.submit(consoleId);
    } catch (error) {
      this.log.warn({ err: error }, 'removing a console from the registry failed; it will expire');
    }
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
