// The tables as kysely sees them (kysely's example/src/database.ts shape): one interface per
// table, Selectable/Insertable/Updateable aliases for callers.
import type { ColumnType, Generated, Insertable, Selectable, Updateable } from 'kysely';

export type SessionStatus = 'pending' | 'provisioning' | 'ready' | 'stopped' | 'failed';
export type Protocol = 'vnc' | 'websockify';

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string | null>;

export interface ConsoleSessionsTable {
  id: string;
  protocol: Protocol;
  owner_id: string | null;
  status: Generated<SessionStatus>;
  target_host: string | null;
  target_port: number | null;
  target_path: string | null;
  /** A `vnc` target on a unix socket instead of host and port (an absolute path). */
  target_socket: string | null;
  /** False: a websockify target that serves no noVNC pages, so the gate skips the HTTP step. */
  target_web_root: Generated<boolean>;
  failure_reason: string | null;
  // jsonb: objects come back parsed; callers write JSON text.
  diagnostics: ColumnType<unknown, string | null | undefined, string | null>;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
  ready_at: Timestamp | null;
  finished_at: Timestamp | null;
  probe_owner: string | null;
  probe_lease_until: Timestamp | null;
  /** VNC credentials sealed with CREDENTIALS_KEY (src/console/credentials.ts); never returned. */
  target_credentials: string | null;
  /** Set by the trigger when the session becomes provisioning or its target changes. */
  provisioning_since: ColumnType<Date | null, never, never>;
}

export interface ConsumedTicketsTable {
  jti: string;
  session_id: string;
  consumed_at: Generated<Date>;
  expires_at: Date;
}

export interface ConsolePortsTable {
  port: number;
  session_id: string;
  allocated_at: Generated<Date>;
}

/** One live console on one replica; renewed while it runs, so a crashed replica's rows expire. */
export interface ConsoleLiveTable {
  id: string;
  session_id: string;
  replica_id: string;
  view_only: boolean;
  exclusive: boolean;
  started_at: Generated<Date>;
  expires_at: Date;
}

export interface Database {
  console_sessions: ConsoleSessionsTable;
  console_live: ConsoleLiveTable;
  consumed_tickets: ConsumedTicketsTable;
  console_ports: ConsolePortsTable;
}

export type SessionRow = Selectable<ConsoleSessionsTable>;
export type NewSessionRow = Insertable<ConsoleSessionsTable>;
export type SessionUpdate = Updateable<ConsoleSessionsTable>;

/** The channel the console_sessions trigger notifies on; the payload is "<id>:<status>". */
export const SESSION_CHANNEL = 'console_session';
