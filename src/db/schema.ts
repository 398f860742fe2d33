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
  /** Set once, when the ended session's teardown ran and its port was released. */
  cleanup_completed_at: Timestamp | null;
  /** Why the session was cleaned: stopped, failed, pending_timeout, provisioning_abandoned, orphaned_resource. */
  cleanup_reason: string | null;
  /** The cleaner working on it now; a claim past `cleanup_claimed_until` is free again. */
  cleanup_claimed_by: string | null;
  cleanup_claimed_until: Timestamp | null;
  cleanup_attempts: Generated<number>;
  cleanup_error: string | null;
  /** Consecutive reconciler passes whose probe of this ready session failed. */
  unreachable_probes: Generated<number>;
  /** Consecutive reconciler passes whose runtime `list` did not show this session. */
  missing_resource_passes: Generated<number>;
  /** The pool port it holds or last held, for the teardown hook after the port is released. */
  last_port: number | null;
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
  /** Renewed by allocating again for the same session; an expired lease is reclaimed. */
  lease_expires_at: Date;
}

export interface ConsolePortConflictsTable {
  port: number;
  /** The host whose bind check found the port held by something else. */
  host: string;
  detected_at: Generated<Date>;
}

export interface ConsoleAuditTable {
  id: Generated<string>;
  session_id: string | null;
  action: string;
  reason: string;
  /** Who acted: role@host:pid, e.g. reconciler@gw-1:4242. */
  actor: string;
  rule: string | null;
  /** A decision a --dry-run pass did not carry out. */
  dry_run: Generated<boolean>;
  created_at: Generated<Date>;
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
  console_port_conflicts: ConsolePortConflictsTable;
  console_audit: ConsoleAuditTable;
}

export type SessionRow = Selectable<ConsoleSessionsTable>;
export type NewSessionRow = Insertable<ConsoleSessionsTable>;
export type SessionUpdate = Updateable<ConsoleSessionsTable>;

/** Console takeover and kick, to every replica: "takeover:<session id>:<console id>", "kick:<session id>". */
export const CONTROL_CHANNEL = 'console_control';

/** The channel the console_sessions trigger notifies on; the payload is "<id>:<status>". */
export const SESSION_CHANNEL = 'console_session';
