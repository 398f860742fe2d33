// Migrations are frozen in time (kysely site/docs/migrations.mdx): they take Kysely<any> and never
// import the current schema types. Plain SQL, so PostgreSQL and the embedded PGlite run the same.
import { Migrator, sql, type Kysely, type Migration, type MigrationResultSet } from 'kysely';

const migrations: Record<string, Migration> = {
  '2026-11-23-01-initial': {
    async up(db: Kysely<any>) {
      await sql`
        create table console_sessions (
          id uuid primary key,
          protocol text not null check (protocol in ('vnc', 'websockify')),
          owner_id text,
          status text not null default 'pending'
            check (status in ('pending', 'provisioning', 'ready', 'stopped', 'failed')),
          target_host text,
          target_port integer check (target_port between 1 and 65535),
          target_path text,
          failure_reason text,
          diagnostics jsonb,
          created_at timestamptz not null default now(),
          updated_at timestamptz not null default now(),
          ready_at timestamptz,
          finished_at timestamptz,
          probe_owner text,
          probe_lease_until timestamptz
        )`.execute(db);
      await sql`create index console_sessions_provisioning on console_sessions (updated_at) where status = 'provisioning'`.execute(db);
      await sql`
        create table consumed_tickets (
          jti text primary key,
          session_id uuid not null,
          consumed_at timestamptz not null default now(),
          expires_at timestamptz not null
        )`.execute(db);
      await sql`create index consumed_tickets_expires_at on consumed_tickets (expires_at)`.execute(db);
      await sql`
        create table console_ports (
          port integer primary key,
          session_id uuid not null unique references console_sessions (id) on delete cascade,
          allocated_at timestamptz not null default now()
        )`.execute(db);
      // Bookkeeping that must hold however a row is written (API, CLI or a backend's plain SQL):
      // a committed target moves a pending session on, and the lifecycle timestamps are set once.
      await sql`
        create function console_sessions_touch() returns trigger language plpgsql as $$
        begin
          new.updated_at := now();
          if new.target_host is not null and new.status = 'pending' then
            new.status := 'provisioning';
          end if;
          if new.status = 'ready' and new.ready_at is null then
            new.ready_at := now();
          end if;
          if new.status in ('stopped', 'failed') and new.finished_at is null then
            new.finished_at := now();
          end if;
          return new;
        end $$`.execute(db);
      await sql`
        create trigger console_sessions_touch before insert or update on console_sessions
        for each row execute function console_sessions_touch()`.execute(db);
      // Wakes waiting upgrades on every replica, whoever committed the change.
      await sql`
        create function console_sessions_notify() returns trigger language plpgsql as $$
        begin
          if tg_op = 'INSERT'
             or new.status is distinct from old.status
             or new.target_host is distinct from old.target_host
             or new.target_port is distinct from old.target_port
             or new.target_path is distinct from old.target_path then
            perform pg_notify('console_session', new.id::text || ':' || new.status);
          end if;
          return null;
        end $$`.execute(db);
      await sql`
        create trigger console_sessions_notify after insert or update on console_sessions
        for each row execute function console_sessions_notify()`.execute(db);
    },
  },
  // The readiness deadline counts from when the session became provisioning (or its target
  // changed). updated_at cannot carry it: every write moves it, lease renewals included.
  '2026-11-23-02-provisioning-since': {
    async up(db: Kysely<any>) {
      await sql`alter table console_sessions add column provisioning_since timestamptz`.execute(db);
      await sql`update console_sessions set provisioning_since = updated_at where status = 'provisioning'`.execute(db);
      await sql`
        create or replace function console_sessions_touch() returns trigger language plpgsql as $$
        begin
          new.updated_at := now();
          if new.target_host is not null and new.status = 'pending' then
            new.status := 'provisioning';
          end if;
          if new.status = 'provisioning' and (
               tg_op = 'INSERT'
               or old.status is distinct from 'provisioning'
               or new.target_host is distinct from old.target_host
               or new.target_port is distinct from old.target_port
               or new.target_path is distinct from old.target_path) then
            new.provisioning_since := now();
          end if;
          if new.status = 'ready' and new.ready_at is null then
            new.ready_at := now();
          end if;
          if new.status in ('stopped', 'failed') and new.finished_at is null then
            new.finished_at := now();
          end if;
          return new;
        end $$`.execute(db);
    },
  },
  // Fleet lifecycle: cleanup bookkeeping on the session (claimed by one cleaner at a time, so each
  // ended session is cleaned exactly once), the reconciler's counters, port leases, ports found
  // held by something else on a host, and the audit trail of every reconciler action.
  '2026-12-01-02-fleet': {
    async up(db: Kysely<any>) {
      await sql`
        alter table console_sessions
          add column cleanup_completed_at timestamptz,
          add column cleanup_reason text,
          add column cleanup_claimed_by text,
          add column cleanup_claimed_until timestamptz,
          add column cleanup_attempts integer not null default 0,
          add column cleanup_error text,
          add column unreachable_probes integer not null default 0,
          add column missing_resource_passes integer not null default 0,
          add column last_port integer`.execute(db);
      await sql`update console_sessions s set last_port = p.port from console_ports p where p.session_id = s.id`.execute(db);
      // Sessions that ended before this version released their port at the stop and ran their
      // teardown then; only those still holding a port are left for the first cleanup.
      await sql`
        update console_sessions s set cleanup_completed_at = coalesce(s.finished_at, s.updated_at), cleanup_reason = s.status
        where s.status in ('stopped', 'failed') and not exists (select 1 from console_ports p where p.session_id = s.id)`.execute(db);
      await sql`
        create index console_sessions_uncleaned on console_sessions (finished_at)
        where status in ('stopped', 'failed') and cleanup_completed_at is null`.execute(db);
      await sql`create index console_sessions_pending on console_sessions (created_at) where status = 'pending'`.execute(db);
      await sql`alter table console_ports add column lease_expires_at timestamptz`.execute(db);
      await sql`update console_ports set lease_expires_at = allocated_at + interval '1 hour'`.execute(db);
      await sql`alter table console_ports alter column lease_expires_at set not null`.execute(db);
      await sql`create index console_ports_lease_expires_at on console_ports (lease_expires_at)`.execute(db);
      await sql`
        create table console_port_conflicts (
          port integer not null,
          host text not null,
          detected_at timestamptz not null default now(),
          primary key (port, host)
        )`.execute(db);
      await sql`
        create table console_audit (
          id bigserial primary key,
          session_id uuid,
          action text not null,
          reason text not null,
          actor text not null,
          rule text,
          dry_run boolean not null default false,
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`create index console_audit_session on console_audit (session_id, created_at)`.execute(db);
      await sql`create index console_audit_created_at on console_audit (created_at)`.execute(db);
    },
  },
  // Targets beyond host and port: a `vnc` target on a unix socket, and websockify targets that
  // serve no noVNC pages. The socket's bookkeeping (provisioning, deadline, wake-up) lives in
  // triggers of its own beside the ones above, so neither needs to know about the other.
  '2026-12-01-03-targets': {
    async up(db: Kysely<any>) {
      await sql`alter table console_sessions add column target_socket text`.execute(db);
      await sql`alter table console_sessions add column target_web_root boolean not null default true`.execute(db);
      await sql`
        alter table console_sessions add constraint console_sessions_socket_target check (
          target_socket is null
          or (left(target_socket, 1) = '/' and protocol = 'vnc'
              and target_host is null and target_port is null and target_path is null))`.execute(db);
      // Runs before console_sessions_touch (triggers fire in name order), which then sees the
      // session provisioning and starts its deadline as for an address.
      await sql`
        create function console_sessions_socket_target() returns trigger language plpgsql as $$
        begin
          if new.target_socket is not null and new.status = 'pending' then
            new.status := 'provisioning';
          end if;
          if tg_op = 'UPDATE' and new.status = 'provisioning'
             and new.target_socket is distinct from old.target_socket then
            new.provisioning_since := now();
          end if;
          return new;
        end $$`.execute(db);
      await sql`
        create trigger console_sessions_socket_target before insert or update on console_sessions
        for each row execute function console_sessions_socket_target()`.execute(db);
      await sql`
        create function console_sessions_notify_socket() returns trigger language plpgsql as $$
        begin
          if new.target_socket is distinct from old.target_socket then
            perform pg_notify('console_session', new.id::text || ':' || new.status);
          end if;
          return null;
        end $$`.execute(db);
      await sql`
        create trigger console_sessions_notify_socket after update on console_sessions
        for each row execute function console_sessions_notify_socket()`.execute(db);
    },
  },
  // Stored VNC credentials (sealed with CREDENTIALS_KEY; the column never holds a password in the
  // clear) and the live-console registry every replica writes, so exclusive consoles, takeover and
  // the live count work across replicas. A crashed replica stops renewing its rows: they expire.
  '2026-12-01-04-consoles': {
    async up(db: Kysely<any>) {
      await sql`alter table console_sessions add column target_credentials text`.execute(db);
      await sql`
        create table console_live (
          id text primary key,
          session_id uuid not null references console_sessions (id) on delete cascade,
          replica_id text not null,
          view_only boolean not null,
          exclusive boolean not null,
          started_at timestamptz not null default now(),
          expires_at timestamptz not null
        )`.execute(db);
      await sql`create index console_live_session on console_live (session_id)`.execute(db);
      await sql`create index console_live_replica on console_live (replica_id)`.execute(db);
    },
  },
};

/** Brings the schema to the latest version; throws with the failing migration's name. */
export async function migrateToLatest(db: Kysely<any>): Promise<MigrationResultSet> {
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async () => migrations },
    migrationTableName: 'console_gateway_migrations',
    migrationLockTableName: 'console_gateway_migrations_lock',
    // Dated names are assigned per piece of work and land in any order; each touches its own
    // columns, so one that sorts before an applied one still runs.
    allowUnorderedMigrations: true,
  });
  const result = await migrator.migrateToLatest();
  if (result.error !== undefined) {
    const failed = result.results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new Error(`migration ${failed} failed: ${(result.error as Error).message ?? result.error}`, { cause: result.error });
  }
  return result;
}
