// Session changes from the database trigger, as events: 'change' (id, status) for each NOTIFY, and
// 'resync' whenever notifications may have been missed (the LISTEN connection was re-established),
// so waiters re-read instead of trusting a silence.
import { EventEmitter } from 'node:events';
import type { SessionStatus } from './schema.js';

export interface SessionEventMap {
  change: [id: string, status: SessionStatus];
  resync: [];
  /** Console control from CONTROL_CHANNEL: take over (all interactive but `except`) or kick all. */
  control: [action: 'takeover' | 'kick', sessionId: string, except: string | undefined];
}

export class SessionEvents extends EventEmitter<SessionEventMap> {
  constructor() {
    super();
    // Every waiting upgrade and live console listens: thousands are normal, not a leak.
    this.setMaxListeners(0);
  }

  /** Parses a trigger payload "<uuid>:<status>" and emits it; ignores anything else. */
  dispatch(payload: string | undefined): void {
    const match = /^([0-9a-f-]{36}):([a-z]+)$/.exec(payload ?? '');
    if (match) this.emit('change', match[1]!, match[2] as SessionStatus);
  }

  /** Parses a CONTROL_CHANNEL payload and emits 'control'; ignores anything else. */
  dispatchControl(payload: string | undefined): void {
    const match = /^(takeover|kick):([0-9a-f-]{36})(?::([\w-]{1,64}))?$/.exec(payload ?? '');
    if (match) this.emit('control', match[1] as 'takeover' | 'kick', match[2]!, match[3]);
  }
}
